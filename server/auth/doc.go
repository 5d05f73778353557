// Package auth implements parley.v1.AuthService and authenticates every
// other call; it also implements parley.v1.AccountService (account.go),
// the password and email calls that build on its passwords, sessions, keys
// and rate limits.
//
// Passwords are hashed with Argon2id in PHC format. A session is a record in
// Redis (the user's id, the session's current JWT and what ListSessions
// shows) plus two tokens: a short-lived Ed25519-signed JWT access token
// carrying the user and session ids, and an opaque refresh token that is
// good for one Refresh. Every authenticated call checks that its session
// still exists in Redis, so Logout and RevokeSession take effect at once on
// every instance. Both tokens name the key of the keyring.Ring that signed
// them, so a retired key keeps verifying during a key rotation.
//
// DeleteAccount (delete.go) checks the password again, then has the
// domains that hold the account's data delete it through AccountDeleter,
// in an order that a crash cannot make lose anything: a tombstone first
// (the account can no longer sign in), then the sessions, chats, files and
// rows; a sweep finishes deletions that stopped part-way.
//
// Authentication runs as HTTP middleware in front of every handler (so
// streams and plain HTTP endpoints are covered, and nothing is decoded for
// an unknown caller), with an explicit list of public procedures.
package auth
