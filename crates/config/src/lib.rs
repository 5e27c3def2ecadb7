//! The node configuration: its schema, where it comes from, in which order
//! the sources are merged, how it is checked, and the last good copy.

pub mod datasource;
pub mod error;
mod fslabel;
pub mod load;
pub mod schema;
pub mod sources;
pub mod values;

pub use error::Problem;
pub use load::{load, save_last_good, Loaded, Paths, Using, CONFIGURED_FLAG};
pub use schema::*;

/// The JSON Schema of `config.yaml`, for editors (`maculaos config schema`).
pub fn json_schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(Config).to_value();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "MaculaOS config.yaml".into());
    }
    s
}
