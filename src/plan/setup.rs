//! A workflow's setup (`apt_packages`, `requirements`, `setup`): what the run path runs once per image and
//! content and keeps as a layer of the store (`run::setup_layer`), so that later runs start from it.

use std::path::PathBuf;

/// Where a setup run leaves its mark in the layer it makes: a main script whose setup block sees it skips that
/// block (it runs inline only where the layer could not be kept).
pub const SETUP_DONE: &str = "/run/drun/setup.done";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetupPlan {
    /// The shell script (`/bin/sh -c`) that installs everything; it ends by creating [`SETUP_DONE`].
    pub script: String,
    /// The build-time environment (`build_environment`): the setup sees it, and so does the run, below its own
    /// environment. Part of the cache key; the runtime environment is not.
    pub env: Vec<(String, String)>,
    /// Host path of the requirements file: read once (bounded), hashed into the key and mounted read-only.
    pub requirements: Option<PathBuf>,
    /// Programs the image must have for the setup (`apt-get`; `pip` or `pip3`), checked before it starts.
    pub needs: Vec<Vec<String>>,
    /// `--no-cache`: build again even where a layer exists (and replace it).
    pub no_cache: bool,
    /// Where it comes from, for `drun images` and `drun prune`: `workflow NAME in FILE`.
    pub source: String,
}
