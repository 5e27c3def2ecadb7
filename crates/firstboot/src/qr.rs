//! The wizard's address as a QR code made of text, for the node's console
//! (a tty or a serial line: no graphics, only characters).
//!
//! # The convention
//!
//! One character covers one module column and two module rows: the upper
//! half of the character is the upper module, the lower half the lower one.
//! **Ink (the character's foreground) is a light module**, blank is a dark
//! one:
//!
//! | character | upper module | lower module |
//! |-----------|--------------|--------------|
//! | `█` (U+2588) | light | light |
//! | `▀` (U+2580) | light | dark  |
//! | `▄` (U+2584) | dark  | light |
//! | ` ` (U+0020) | dark  | dark  |
//!
//! Around the symbol is a light quiet zone: 2 modules on the left, top and
//! right, and 3 at the bottom (the symbol plus 4 is always odd, so one more
//! light row pairs the last text row up). Every line therefore starts and
//! ends with `█`, and the first and last lines are all `█`.
//!
//! Why ink is light: consoles draw light text on a dark background (the
//! Linux VT, serial terminals, most terminal emulators), so this reads as a
//! normal dark-on-light QR code there; and because every line ends in ink,
//! a log that trims trailing blanks, or a terminal that drops them, loses
//! nothing. On a light-background terminal the code shows inverted, which
//! most phone scanners read as well.

use anyhow::Context;
use qrcode::{Color, EcLevel, QrCode};

/// Light modules around the symbol (left, top and right; one more below).
pub const QUIET_ZONE: usize = 2;

/// `data` as a text QR code (see the module documentation for what each
/// character means), one line per two module rows, each line ending in `\n`.
///
/// Error correction level M: a photo of a screen is rarely damaged, but
/// moiré and glare cost a few modules; M keeps the wizard's URL (~45 bytes)
/// at version 3 or 4 (29 or 33 modules: at most 37 columns and 19 lines
/// with the quiet zone), which fits an 80×25 console with room for text.
pub fn qr_text(data: &str) -> anyhow::Result<String> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)
        .with_context(|| format!("cannot make a QR code of {} bytes", data.len()))?;
    let w = code.width();
    let colors = code.to_colors();
    let size = w + 2 * QUIET_ZONE;
    // Light outside the symbol: the quiet zone and the padding row.
    let light = |x: usize, y: usize| -> bool {
        if x < QUIET_ZONE || y < QUIET_ZONE {
            return true;
        }
        let (sx, sy) = (x - QUIET_ZONE, y - QUIET_ZONE);
        if sx >= w || sy >= w {
            return true;
        }
        colors.get(sy * w + sx) != Some(&Color::Dark)
    };
    let mut out = String::new();
    for row in (0..size).step_by(2) {
        for x in 0..size {
            out.push(match (light(x, row), light(x, row + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

/// The module matrix of a text QR code written by [`qr_text`], rows of
/// columns, `true` for a dark module, quiet zone included.
///
/// The text may come from a log: lines are taken from the first one made
/// only of `█▀▄` and spaces (with at least one block) to the last such line
/// after it, so text before and after is skipped. A `\r` at the end of a
/// line is ignored. Lines shorter than the longest are filled with light
/// modules, as the quiet zone would be. Each line gives two rows.
pub fn qr_modules_from_text(text: &str) -> Vec<Vec<bool>> {
    let is_qr_line = |l: &str| {
        l.chars().any(|c| matches!(c, '█' | '▀' | '▄'))
            && l.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' '))
    };
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| !is_qr_line(l))
        .take_while(|l| is_qr_line(l))
        .collect();
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(lines.len() * 2);
    for line in lines {
        let mut upper = vec![false; width];
        let mut lower = vec![false; width];
        for (x, c) in line.chars().enumerate() {
            // dark = true: blank half is dark, ink is light.
            let (u, l) = match c {
                '█' => (false, false),
                '▀' => (false, true),
                '▄' => (true, false),
                _ => (true, true),
            };
            upper[x] = u;
            lower[x] = l;
        }
        rows.push(upper);
        rows.push(lower);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a module matrix with rqrr, `scale` pixels a module, with
    /// `border` modules of `border_dark` around it.
    fn decode(modules: &[Vec<bool>], scale: usize, border: usize, border_dark: bool) -> String {
        let h = modules.len();
        let w = modules[0].len();
        let (pw, ph) = ((w + 2 * border) * scale, (h + 2 * border) * scale);
        let mut img = rqrr::PreparedImage::prepare_from_bitmap(pw, ph, |x, y| {
            let (mx, my) = (x / scale, y / scale);
            if mx < border || my < border || mx >= w + border || my >= h + border {
                return border_dark;
            }
            modules[my - border][mx - border]
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "QR code not found");
        grids[0].decode().unwrap().1
    }

    const URL: &str = "http://macula-ab12.local/?code=ABCD-EFGH-JK";

    #[test]
    fn text_qr_round_trips_through_a_real_decoder() {
        let text = qr_text(URL).unwrap();
        let m = qr_modules_from_text(&text);
        // 43 bytes: one byte over version 3-M in byte mode, but the code
        // part goes in alphanumeric mode, which fits version 3 (29 modules).
        assert_eq!(m[0].len(), 29 + 2 * QUIET_ZONE);
        assert_eq!(m.len(), 29 + 2 * QUIET_ZONE + 1);
        assert!(m.iter().all(|r| r.len() == m[0].len()));
        // Light paper around it, as on a printout.
        assert_eq!(decode(&m, 4, 4, false), URL);
        // What a dark console shows: black beyond the light quiet zone.
        assert_eq!(decode(&m, 4, 4, true), URL);
    }

    #[test]
    fn the_text_follows_the_documented_convention() {
        let text = qr_text("x").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Version 1: 21 modules, 25 with the quiet zone, 13 lines.
        assert_eq!(lines.len(), 13);
        for l in &lines {
            assert_eq!(l.chars().count(), 25);
            assert!(l.starts_with("██") && l.ends_with("██"), "{l}");
        }
        assert!(lines[0].chars().all(|c| c == '█'));
        assert!(lines[12].chars().all(|c| c == '█'));
        // Row 2 is the top edge of the finder pattern (7 dark modules),
        // row 3 its second row (dark, 5 light, dark): upper dark + lower
        // dark is ' ', upper dark + lower light is '▄'.
        let l1: Vec<char> = lines[1].chars().collect();
        assert_eq!(l1[2], ' ');
        assert_eq!(l1[3], '▄');
        assert_eq!(l1[8], ' ');
        assert_eq!(l1[9], '█');
    }

    #[test]
    fn parsing_skips_surrounding_log_text_and_carriage_returns() {
        let text = qr_text(URL).unwrap();
        let log = format!(
            "[  OK  ] Started something.\r\nScan to pair:\r\n{}\r\nPairing code: ABCDE-FGHJK\r\n",
            text.replace('\n', "\r\n")
        );
        let m = qr_modules_from_text(&log);
        assert_eq!(m, qr_modules_from_text(&text));
        assert_eq!(decode(&m, 3, 4, false), URL);
        assert!(qr_modules_from_text("no code here\n").is_empty());
    }

    #[test]
    fn long_data_is_an_error_not_a_panic() {
        assert!(qr_text(&"x".repeat(5000)).is_err());
    }
}
