package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// Avatar holds the schema of the avatars table. A partial unique index lets
// each user have at most one active avatar, whatever the code does.
type Avatar struct {
	ent.Schema
}

// Annotations names the table as the data model does.
func (Avatar) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Table("avatars")}
}

// Fields of the Avatar.
func (Avatar) Fields() []ent.Field {
	return []ent.Field{
		field.Int("id").
			StorageKey("avatar_id").
			SchemaType(pgInteger).
			Immutable(),
		field.Int("user_id").
			SchemaType(pgInteger).
			Immutable(),
		field.Text("avatar_url").
			NotEmpty(),
		field.Bool("is_active").
			Default(false),
		// is_random marks the generated identicon every user starts with.
		field.Bool("is_random").
			Default(false),
		field.Time("uploaded_at").
			Default(time.Now).
			Immutable().
			Annotations(entsql.Default("CURRENT_TIMESTAMP")),
	}
}

// Edges of the Avatar.
func (Avatar) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("user", User.Type).
			Ref("avatars").
			Field("user_id").
			Unique().
			Required().
			Immutable(),
	}
}

// Indexes of the Avatar.
func (Avatar) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("user_id", "uploaded_at"),
		// The avatar that serves an image: AddAvatar's check and media
		// clean-up look it up by its URL.
		index.Fields("avatar_url"),
		index.Fields("user_id").
			Unique().
			StorageKey("avatars_one_active_per_user").
			Annotations(entsql.IndexWhere("is_active")),
	}
}
