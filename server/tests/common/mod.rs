//! What the layer tests share: serving a stack on a private Unix socket and running nbdsh
//! scripts against it (a real client), then stopping the server.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use nbdforge_api::{Backend, Filter, LayerInfo, Plugin};
use nbdforge_server::{listen, Server, ServerConfig, Stack};

/// A stack of `filters` (client side first) over `plugin`, finished.
pub fn stack(plugin: impl Plugin, filters: Vec<Box<dyn Filter>>) -> Arc<dyn Backend> {
    let filters = filters.into_iter().enumerate().map(|(i, f)| (LayerInfo::new(format!("filter{i}"), ""), f)).collect();
    Stack::new((LayerInfo::new("plugin", ""), Box::new(plugin)), filters).finish().unwrap()
}

/// A server running on its own thread.
pub struct Running {
    pub server: Arc<Server>,
    pub uri: String,
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn serve(backend: Arc<dyn Backend>, name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("nbdforge-layers-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("sock");
    let _ = std::fs::remove_file(&sock);
    let listener = listen::bind_unix(&sock).unwrap();
    let server = Arc::new(Server::new(backend, ServerConfig::default()));
    let thread = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || server.serve(vec![listener]).unwrap())
    };
    Running { server, uri: format!("nbd+unix:///?socket={}", sock.display()), dir, thread: Some(thread) }
}

impl Running {
    /// Runs `script` in nbdsh connected to the server (`h` is the handle); true if it succeeded.
    pub fn nbdsh(&self, script: &str) -> bool {
        self.spawn_nbdsh(script).wait().unwrap().success()
    }

    /// Starts `script` in nbdsh connected to the server, without waiting for it.
    pub fn spawn_nbdsh(&self, script: &str) -> std::process::Child {
        Command::new("nbdsh")
            .env("PATH", format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()))
            .args(["-u", &self.uri, "-c", script])
            .spawn()
            .expect("nbdsh (apt-get install python3-libnbd libnbd-bin)")
    }

    /// Waits for the server to return from `serve` (after a shutdown).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.shutdown_handle().shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
