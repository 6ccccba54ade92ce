//! IKEv2 and ESP: sans-IO state machines and crypto backends (issue: IPsec SD-EWAN tunnels).
