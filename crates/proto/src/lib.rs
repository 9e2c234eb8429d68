//! Wire formats: the etcd v3 API (packages `etcdserverpb`, `mvccpb`, `authpb`,
//! wire-compatible with etcd) and ostrakon's peer protocol. Conversions between the peer
//! protocol and the raft core's types live here and only here; data arriving from the
//! network is validated once, in `TryFrom`, and trusted afterwards.

#![allow(clippy::large_enum_variant)]

pub mod codec;

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

// The path of every gRPC method the protocol definitions declare (`build.rs`).
include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

/// Whether `path` (`/package.Service/Method`) names a method the protocols declare.
pub fn is_grpc_method(path: &str) -> bool {
    GRPC_METHODS.binary_search(&path).is_ok()
}

#[cfg(test)]
mod grpc_method_tests {
    #[test]
    fn declared_methods_are_known_and_others_are_not() {
        assert!(super::is_grpc_method("/etcdserverpb.KV/Range"));
        assert!(super::is_grpc_method("/v3lockpb.Lock/Unlock"));
        assert!(super::is_grpc_method("/ostrakonpb.Ranges/Split"));
        assert!(!super::is_grpc_method("/etcdserverpb.KV/Ranges"));
        assert!(!super::is_grpc_method("/etcdserverpb.KV/"));
    }
}
