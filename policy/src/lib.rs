//! NetworkPolicy to ACL compiler (issue: NetworkPolicy enforced as dataplane ACLs).
