//! BGP speaker: sans-IO session state machine and RIBs (issue: BGP speaker).
