// @parley/client: typed clients for the Parley messenger API.
//
// The messages and service descriptors are generated from proto/ by
// protoc-gen-es (see `make generate`); use them with a Connect transport
// from @connectrpc/connect-web (browsers) or @connectrpc/connect-node.
export * from "./gen/parley/v1/auth_pb.js";
export * from "./gen/parley/v1/avatar_pb.js";
export * from "./gen/parley/v1/chat_pb.js";
export * from "./gen/parley/v1/message_pb.js";
export * from "./gen/parley/v1/server_pb.js";
export * from "./gen/parley/v1/user_pb.js";
