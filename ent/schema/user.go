// Package schema holds Parley's hand-written ent schemas for PostgreSQL: the
// customer's users, profile and avatars tables, and Parley's blocks table.
// Everything else under ent/ is generated from this package by `make
// generate`.
package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
)

// Limits of the users table, from the customer's data model.
const (
	// UsernameMaxLen is the longest username, in characters.
	UsernameMaxLen = 50
	// EmailMaxLen is the longest email address, in characters.
	EmailMaxLen = 100
	// PhoneMaxLen is the longest phone number, in characters (E.164 with '+').
	PhoneMaxLen = 15
)

// pgInteger keeps ids as the seed's 32-bit SERIAL columns on PostgreSQL.
var pgInteger = map[string]string{dialect.Postgres: "integer"}

// User holds the schema of the users table. Usernames are unique by their
// key (username_key), emails regardless of case; the case-insensitive
// unique indexes on lower(username) and lower(email) live in the SQL
// migrations (and, for SQLite, in server/sqldb), because ent cannot express
// an index on an expression.
type User struct {
	ent.Schema
}

// Annotations names the table as the data model does.
func (User) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Table("users")}
}

// Fields of the User.
func (User) Fields() []ent.Field {
	return []ent.Field{
		field.Int("id").
			StorageKey("user_id").
			SchemaType(pgInteger).
			Immutable(),
		field.String("username").
			MaxRuneLen(UsernameMaxLen).
			NotEmpty().
			SchemaType(map[string]string{dialect.Postgres: "varchar(50)"}),
		// The username's key: case and width folded (PRECIS
		// UsernameCaseMapped), unique, compared by login and search; see
		// server/user/username.go. Null for an account created before keys
		// until the start-up check gives it one.
		field.String("username_key").
			Optional().
			Nillable().
			Unique(),
		field.String("email").
			MaxRuneLen(EmailMaxLen).
			NotEmpty().
			Unique().
			SchemaType(map[string]string{dialect.Postgres: "varchar(100)"}),
		field.Text("password_hash").
			NotEmpty().
			Sensitive(),
		// When the email was verified; null while it is not (accounts
		// from before verification existed start so).
		field.Time("email_verified_at").
			Optional().
			Nillable(),
		// The address a change asked for, until it is verified and
		// replaces email.
		field.String("pending_email").
			MaxRuneLen(EmailMaxLen).
			Optional().
			Nillable().
			SchemaType(map[string]string{dialect.Postgres: "varchar(100)"}),
		field.String("phone_number").
			MaxRuneLen(PhoneMaxLen).
			Optional().
			Nillable().
			SchemaType(map[string]string{dialect.Postgres: "varchar(15)"}),
	}
}

// Edges of the User.
func (User) Edges() []ent.Edge {
	return []ent.Edge{
		// The profile shares the user's primary key: profile.user_id is both
		// its id and its foreign key, so a user has at most one profile.
		edge.To("profile", Profile.Type).
			Unique().
			StorageKey(edge.Column("user_id")).
			Annotations(entsql.OnDelete(entsql.Cascade)),
		edge.To("avatars", Avatar.Type).
			Annotations(entsql.OnDelete(entsql.Cascade)),
		// The users this user blocked, and those who blocked it.
		edge.To("blocks", Block.Type).
			Annotations(entsql.OnDelete(entsql.Cascade)),
		edge.To("blocked_by", Block.Type).
			Annotations(entsql.OnDelete(entsql.Cascade)),
	}
}
