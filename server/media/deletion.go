package media

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// DeleteUploadsOf deletes, with their files, the uploads of a user whose
// account is being deleted that no message and no group uses: the images
// of its avatars, and what it uploaded and never sent, whatever state the
// upload is in. Files sent in messages stay with the messages, and a
// group keeps the avatar it was given. An upload claimed for a message or
// a group but not yet recorded on it (a send that stopped part-way) is
// left to clean-up, which asks whether the message or group uses it. It
// is idempotent, and returns how many uploads it deleted.
func (l *Library) DeleteUploadsOf(ctx context.Context, userID int) (int, error) {
	cur, err := l.store.media.Find(ctx, bson.D{
		{Key: "uploaderId", Value: userID},
		{Key: "messageId", Value: bson.D{{Key: "$exists", Value: false}}},
		{Key: "groupId", Value: bson.D{{Key: "$exists", Value: false}}},
	}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return 0, fmt.Errorf("uploads of user: %w", err)
	}
	var ids []struct {
		ID bson.ObjectID `bson:"_id"`
	}
	if err := cur.All(ctx, &ids); err != nil {
		return 0, fmt.Errorf("uploads of user: %w", err)
	}
	n := 0
	var errs []error
	for _, doc := range ids {
		// Looked at again under the document's lock: it may have been
		// sent since.
		deleted, err := l.delete(ctx, doc.ID, func(m *mediaDoc) bool {
			return m.UploaderID == userID && m.MessageID == nil && m.GroupID == nil &&
				!strings.HasPrefix(m.Claim, "message:") && !strings.HasPrefix(m.Claim, claimGroup)
		})
		if err != nil {
			if ctx.Err() != nil {
				return n, err
			}
			errs = append(errs, fmt.Errorf("media %s: %w", doc.ID.Hex(), err))
			continue
		}
		if deleted {
			n++
		}
	}
	return n, errors.Join(errs...)
}
