//! Wire formats: the etcd v3 API (packages `etcdserverpb`, `mvccpb`, `authpb`,
//! wire-compatible with etcd) and ostrakon's peer protocol. Conversions between the peer
//! protocol and the raft core's types live here and only here; data arriving from the
//! network is validated once, in `TryFrom`, and trusted afterwards.

#![allow(clippy::large_enum_variant)]

/// etcd's key-value types.
pub mod mvccpb {
    #![allow(missing_docs)]
    tonic::include_proto!("mvccpb");
}

/// etcd's auth types.
pub mod authpb {
    #![allow(missing_docs)]
    tonic::include_proto!("authpb");
}

/// etcd's gRPC API.
pub mod etcdserverpb {
    #![allow(missing_docs)]
    #![allow(clippy::doc_lazy_continuation)]
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service.
pub mod v3lockpb {
    #![allow(missing_docs)]
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service.
pub mod v3electionpb {
    #![allow(missing_docs)]
    tonic::include_proto!("v3electionpb");
}

/// ostrakon's member-to-member protocol.
pub mod peer {
    #![allow(missing_docs)]
    tonic::include_proto!("peerpb");
}

mod raft_convert;

pub use raft_convert::InvalidMessage;
