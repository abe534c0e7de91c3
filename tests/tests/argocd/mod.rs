//! Runs the Argo CD health check that README.md documents (docs/argocd-health.lua, read from
//! the file so the test and the documentation cannot drift) on a resource, with Lua 5.4 as
//! Argo CD runs it: `obj` is the resource, the script returns `{status, message}`.

use mlua::LuaSerdeExt;
use mlua::serde::SerializeOptions;

/// The script as shipped.
pub fn script() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/argocd-health.lua");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Argo CD's verdict on `object` (any serializable resource): (status, message).
pub fn health(object: &impl serde::Serialize) -> (String, String) {
    let lua = mlua::Lua::new();
    // JSON null is Lua nil, as Argo CD hands objects to its scripts.
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = serde_json::to_value(object).expect("the resource serializes");
    lua.globals()
        .set("obj", lua.to_value_with(&value, options).expect("to Lua"))
        .expect("obj set");
    let hs: mlua::Table = lua
        .load(script())
        .set_name("argocd-health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("the health script failed: {e}"));
    (
        hs.get::<String>("status").expect("hs.status"),
        hs.get::<Option<String>>("message")
            .expect("hs.message")
            .unwrap_or_default(),
    )
}
