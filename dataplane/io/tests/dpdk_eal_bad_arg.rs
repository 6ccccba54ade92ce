//! A bad EAL argument gives a clear error, not a panic or an exit. This file is its own test
//! process because `rte_eal_init` can run only once per process, even when it fails.

#![cfg(feature = "dpdk")]

use switchyard_io::dpdk::Eal;
use switchyard_io::IoError;

#[test]
fn dpdk_bad_eal_argument_is_an_error() {
    let args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--this-is-not-an-eal-option",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match Eal::init(&args) {
        Err(IoError::Dpdk(msg)) => {
            assert!(msg.contains("rte_eal_init"), "{msg}");
            assert!(msg.contains("--this-is-not-an-eal-option"), "{msg}");
            // rte_strerror(rte_errno): EINVAL for an unknown option.
            assert!(msg.contains("Invalid argument"), "{msg}");
        }
        other => panic!("expected IoError::Dpdk, got {other:?}"),
    }
    // The EAL does not allow a second attempt after a failed one either.
    let again = Eal::init(&["--no-huge".to_string()]);
    assert!(matches!(again, Err(IoError::Dpdk(_))), "{again:?}");

    // A NUL byte is refused before DPDK sees anything.
    assert!(matches!(
        Eal::init(&["a\0b".to_string()]),
        Err(IoError::BadArguments(_))
    ));
}
