//! Compiles the etcd v3, peer and OTLP trace export protocol definitions with a vendored protoc, so a fresh
//! machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
        "proto/etcd/rpc.proto",
        "proto/etcd/v3lock.proto",
        "proto/etcd/v3election.proto",
        "proto/peer.proto",
        "proto/ostrakon.proto",
        "proto/otlp_trace.proto",
    ];
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("descriptors.bin");
    tonic_build::configure()
        .bytes(["."])
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["proto"])?;
    // serde for the etcd API's messages, as etcd's JSON gateway writes them: the proto
    // field names, 64-bit integers as strings, bytes in base64, enums by name.
    let descriptor_set = std::fs::read(&descriptors)?;
    // Unknown fields are ignored, as etcd's gateway ignores them (found by the
    // differential test through the gateway).
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    write_grpc_methods(&descriptor_set, &out_dir.join("grpc_methods.rs"))?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

/// Writes `GRPC_METHODS`, the path (`/package.Service/Method`) of every method the
/// protocol definitions declare, sorted: what a server may count a call under.
fn write_grpc_methods(
    descriptor_set: &[u8],
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(descriptor_set)?;
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths.sort();
    let listed: String = paths
        .iter()
        .map(|path| format!("    {path:?},\n"))
        .collect();
    std::fs::write(
        out,
        format!(
            "/// Every method's path, sorted.\npub const GRPC_METHODS: &[&str] = &[\n{listed}];\n"
        ),
    )?;
    Ok(())
}
