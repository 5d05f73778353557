package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
)

// Profile holds the schema of the profile table: one row per user, keyed by
// the user's id.
type Profile struct {
	ent.Schema
}

// Annotations names the table as the data model does.
func (Profile) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Table("profile")}
}

// Fields of the Profile.
func (Profile) Fields() []ent.Field {
	return []ent.Field{
		// The id is the owning user's id (see User.Edges), never generated.
		field.Int("id").
			StorageKey("user_id").
			SchemaType(pgInteger).
			Immutable().
			Annotations(entsql.Annotation{Incremental: new(false)}),
		field.Text("description").
			Optional().
			Nillable(),
		field.Time("created_at").
			Default(time.Now).
			Immutable().
			Annotations(entsql.Default("CURRENT_TIMESTAMP")),
		field.Time("last_login").
			Optional().
			Nillable(),
		// The privacy settings (parley.v1.PrivacySettings), here because
		// every user has exactly one profile.
		field.Enum("group_adds").
			Values("everyone", "chatted", "nobody").
			Default("everyone"),
		field.Enum("private_chats").
			Values("everyone", "groups", "nobody").
			Default("everyone"),
		field.Bool("hide_last_seen").
			Default(false),
	}
}

// Edges of the Profile.
func (Profile) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("user", User.Type).
			Ref("profile").
			Unique().
			Required().
			Immutable(),
	}
}
