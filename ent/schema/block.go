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

// Block holds the schema of the blocks table: one row per user a user
// blocked. The unique (blocker_id, blocked_id) index makes a block a set
// membership, whatever the code does, and serves the one-row check a
// send into a private chat makes.
type Block struct {
	ent.Schema
}

// Annotations names the table.
func (Block) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Table("blocks")}
}

// Fields of the Block.
func (Block) Fields() []ent.Field {
	return []ent.Field{
		field.Int("id").
			StorageKey("block_id").
			SchemaType(pgInteger).
			Immutable(),
		field.Int("blocker_id").
			SchemaType(pgInteger).
			Immutable(),
		field.Int("blocked_id").
			SchemaType(pgInteger).
			Immutable(),
		field.Time("created_at").
			Default(time.Now).
			Immutable().
			Annotations(entsql.Default("CURRENT_TIMESTAMP")),
	}
}

// Edges of the Block.
func (Block) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("blocker", User.Type).
			Ref("blocks").
			Field("blocker_id").
			Unique().
			Required().
			Immutable(),
		edge.From("blocked", User.Type).
			Ref("blocked_by").
			Field("blocked_id").
			Unique().
			Required().
			Immutable(),
	}
}

// Indexes of the Block.
func (Block) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("blocker_id", "blocked_id").Unique(),
		// ListBlockedUsers pages by id, newest first.
		index.Fields("blocker_id", "id"),
		// "Who blocked this user?" (presence, group adds).
		index.Fields("blocked_id"),
	}
}
