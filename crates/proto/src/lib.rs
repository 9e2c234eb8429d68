//! Wire formats: the etcd v3 API (packages `etcdserverpb`, `mvccpb`, `authpb`,
//! wire-compatible with etcd) and ostrakon's peer protocol. Conversions between the peer
//! protocol and the raft core's types live here and only here; data arriving from the
//! network is validated once, in `TryFrom`, and trusted afterwards.

#![allow(clippy::large_enum_variant)]

/// etcd's key-value types.
pub mod mvccpb {
    #![allow(missing_docs)]
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth types.
pub mod authpb {
    #![allow(missing_docs)]
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's gRPC API.
pub mod etcdserverpb {
    #![allow(missing_docs)]
    #![allow(clippy::doc_lazy_continuation)]
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's lock service.
pub mod v3lockpb {
    #![allow(missing_docs)]
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's election service.
pub mod v3electionpb {
    #![allow(missing_docs)]
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// ostrakon's member-to-member protocol.
pub mod peer {
    #![allow(missing_docs)]
    tonic::include_proto!("peerpb");
}

/// ostrakon's own client API (what etcd's has no call for).
pub mod ostrakonpb {
    #![allow(missing_docs)]
    tonic::include_proto!("ostrakonpb");
}

/// The OpenTelemetry protocol's trace export (OTLP/gRPC), as far as ostrakon uses it.
pub mod otlp {
    #![allow(missing_docs)]
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

mod raft_convert;

pub use raft_convert::InvalidMessage;
