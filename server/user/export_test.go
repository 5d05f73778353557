package user

import (
	"context"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/server/sqldb"
)

// SearchStore runs the store's search on db, for the external tests: the
// users whose username starts with prefix after the cursor (key, id),
// none when key is "".
func SearchStore(ctx context.Context, db *sqldb.DB, prefix, key string, id, limit int) ([]*ent.User, error) {
	var after *searchCursor
	if key != "" {
		after = &searchCursor{Key: key, ID: id}
	}
	return (&store{db: db}).search(ctx, prefix, after, limit)
}
