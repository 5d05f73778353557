package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// DeletedUser holds the schema of the deleted_users table: the tombstone of
// an account being or having been deleted (AuthService.DeleteAccount). It
// is written first, so that the account stops signing in and being found
// at once, and it outlives the users row: it marks the id as a deleted
// account's (User.deleted) and holds the username back for a while. It
// has no foreign key, as the user it names is gone once finished_at is
// set.
type DeletedUser struct {
	ent.Schema
}

// Annotations names the table.
func (DeletedUser) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Table("deleted_users")}
}

// Fields of the DeletedUser.
func (DeletedUser) Fields() []ent.Field {
	return []ent.Field{
		// The deleted user's id, never generated here.
		field.Int("id").
			StorageKey("user_id").
			SchemaType(pgInteger).
			Immutable().
			Annotations(entsql.Annotation{Incremental: new(false)}),
		// The username's key (see User.username_key) when the deletion
		// began: Register and renames refuse it for a while.
		field.String("username_key").
			Immutable(),
		// When the deletion began.
		field.Time("deleted_at").
			Immutable(),
		// When the deletion finished; null while it is under way or
		// stopped part-way (a sweep finishes those).
		field.Time("finished_at").
			Optional().
			Nillable(),
	}
}

// Indexes of the DeletedUser.
func (DeletedUser) Indexes() []ent.Index {
	return []ent.Index{
		// Register's check of a held-back username.
		index.Fields("username_key", "deleted_at"),
		// The sweep's look for deletions that stopped part-way.
		index.Fields("deleted_at").
			StorageKey("deleted_users_unfinished").
			Annotations(entsql.IndexWhere("finished_at IS NULL")),
	}
}
