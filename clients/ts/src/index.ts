// @parley/client: typed clients for the Parley messenger API.
//
// createParleyClient (client.ts) gives typed clients of every service over
// the Connect or gRPC-Web protocol, with the access token attached and
// refreshed, a resumable live event stream and uploads with progress. The
// messages and service descriptors are generated from proto/ by
// protoc-gen-es (see `make generate`).
export * from "./client.js";
export * from "./tokens.js";
export * from "./gen/parley/v1/account_pb.js";
export * from "./gen/parley/v1/auth_pb.js";
export * from "./gen/parley/v1/avatar_pb.js";
export * from "./gen/parley/v1/chat_pb.js";
export * from "./gen/parley/v1/export_pb.js";
export * from "./gen/parley/v1/live_pb.js";
export * from "./gen/parley/v1/media_pb.js";
export * from "./gen/parley/v1/message_pb.js";
export * from "./gen/parley/v1/privacy_pb.js";
export * from "./gen/parley/v1/push_pb.js";
export * from "./gen/parley/v1/server_pb.js";
export * from "./gen/parley/v1/user_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { create } from "@bufbuild/protobuf";
