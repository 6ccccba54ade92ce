//! The in-repo test API server, serving inside a lab's network namespace.
//!
//! The server runs in the test process, but on a thread that first moved into the namespace
//! (`setns`), with a runtime of its own: a socket belongs to the namespace of the thread that
//! makes it, so the server listens on the namespace's loopback, where the agent finds it, and
//! nothing listens in the root namespace. Every socket operation of the server (start, pause,
//! resume) runs on that thread; tests change objects through the server's synchronous API,
//! which touches no socket.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use switchyard_apiserver::ApiServer;

/// What the server thread is asked to do.
enum Command {
    Pause(mpsc::Sender<()>),
    Resume(mpsc::Sender<std::io::Result<()>>),
}

/// The test API server, serving inside a network namespace.
pub struct NsApiServer {
    pub server: Arc<ApiServer>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
}

impl NsApiServer {
    /// Starts the server on the loopback of the namespace `netns` (a name under /run/netns).
    pub fn start(netns: &str) -> NsApiServer {
        let path = format!("/run/netns/{netns}");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                // One thread: every task (and so every socket) stays in this namespace.
                let runtime = match super::runtime_in_netns(&path) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let server = match ApiServer::start().await {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("start: {e}")));
                            return;
                        }
                    };
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let _ = ready_tx.send(Ok((Arc::clone(&server), tx)));
                    // Ends when the test drops its `NsApiServer` (the sender).
                    while let Some(command) = rx.recv().await {
                        match command {
                            Command::Pause(done) => {
                                server.pause().await;
                                let _ = done.send(());
                            }
                            Command::Resume(done) => {
                                let _ = done.send(server.resume().await);
                            }
                        }
                    }
                });
            })
            .expect("spawn the API server thread");
        let (server, commands) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("API server thread answers")
            .unwrap_or_else(|e| panic!("API server in {netns}: {e}"));
        NsApiServer { server, commands }
    }

    pub fn pause(&self) {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::Pause(tx))
            .expect("server thread");
        rx.recv_timeout(Duration::from_secs(10)).expect("paused");
    }

    pub fn resume(&self) {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::Resume(tx))
            .expect("server thread");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("resumed")
            .expect("rebind the API server's port");
    }
}
