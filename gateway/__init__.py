"""Gateway service: KServe v2 / Triton protocol over gRPC and HTTP; requests go into the mesh over NATS."""
