// Package migrations holds Parley's versioned PostgreSQL migrations, in
// goose's SQL format, embedded into the binary. Files are named
// NNNNN_description.sql and never edited once released; a schema change in
// ent/schema comes with a new file here, and TestMigrations_MatchEntSchema
// fails until it does.
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
