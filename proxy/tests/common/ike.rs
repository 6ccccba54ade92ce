//! What the IKE interop tests against other implementations (`ipsec_libreswan.rs`,
//! `ipsec_openiked.rs`) share: the SD-EWAN resources of one PSK site for our daemon, and shell
//! commands in the peer's namespace from the daemon's thread. Included by those test crates
//! as `mod ike` (they have the daemon's `config` module); not part of `common`.

use std::path::Path;

use crate::common::text;
use crate::config::Resources;

/// One PSK site with one tunnel connection, as SD-EWAN resources describe it.
pub struct Site<'a> {
    /// The peer's IKE address.
    pub remote: &'a str,
    /// Our identity (empty: our address) and the peer's.
    pub local_id: &'a str,
    pub remote_id: &'a str,
    pub psk: &'a str,
    /// The IKE and ESP proposals, in strongSwan's notation.
    pub ike: &'a str,
    pub esp: &'a str,
    /// True: we start the tunnel; false: we wait for the peer.
    pub start: bool,
    pub local_subnet: &'a str,
    pub remote_subnet: &'a str,
}

impl Site<'_> {
    /// An IpsecProposal and an IpsecSite, loaded as the daemon's resources.
    pub fn resources(&self) -> Resources {
        let mode = if self.start { "start" } else { "add" };
        let yaml = format!(
            r#"apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecProposal
metadata:
  name: ike-proposal
spec:
  encryption_algorithm: "{ike}"
  hash_algorithm: ""
  dh_group: ""
---
apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecSite
metadata:
  name: site
spec:
  remote: {remote}
  local_identifier: "{local_id}"
  remote_identifier: "{remote_id}"
  authentication_method: psk
  pre_shared_key: "{psk}"
  crypto_proposal: [ike-proposal]
  connections:
    - name: net
      conn_type: tunnel
      mode: {mode}
      local_subnet: {local_subnet}
      remote_subnet: {remote_subnet}
      crypto_proposal: ["{esp}"]
"#,
            ike = self.ike,
            esp = self.esp,
            psk = self.psk,
            remote = self.remote,
            local_id = self.local_id,
            remote_id = self.remote_id,
            local_subnet = self.local_subnet,
            remote_subnet = self.remote_subnet,
        );
        let mut r = Resources::default();
        r.add_text(Path::new("case.yaml"), &yaml)
            .expect("the test's SD-EWAN resources parse");
        r
    }
}

/// Runs shell commands in the peer's namespace from the daemon's thread.
#[derive(Clone)]
pub struct Shell {
    pub ns: String,
}

impl Shell {
    /// `cmd` with `sh -c`, bounded to 40 s; its stdout and stderr.
    pub async fn run(&self, cmd: String) -> String {
        let ns = self.ns.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("timeout")
                .args([
                    "-k", "2", "40", "ip", "netns", "exec", &ns, "sh", "-c", &cmd,
                ])
                .output()
                .map(|o| format!("{}{}", text(&o.stdout), text(&o.stderr)))
                .unwrap_or_else(|e| format!("cannot run: {e}"))
        })
        .await
        .unwrap_or_default()
    }
}
