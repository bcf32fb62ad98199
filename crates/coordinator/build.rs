//! Generates the gRPC front end's messages and services from `proto/inference.proto` and
//! Chorus's own `proto/feedback.proto` (needs
//! `protoc`, which scripts/install-deps.sh installs; etcd-client needs it too).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // Tensor bytes stay `Bytes`: raw inputs are sliced out of the received message and raw
        // outputs sent without a copy.
        .bytes(".inference")
        // Maps of a few entries (parameters, tensor maps): no hasher to seed per message.
        .btree_map(".inference")
        // Buffers sized for inference messages, not tonic's 8 KiB (see src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::ProstCodec")
        .compile_protos(
            &["proto/inference.proto", "proto/feedback.proto"],
            &["proto"],
        )
}
