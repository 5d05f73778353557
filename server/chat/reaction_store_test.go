package chat

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestReactions_AddAfterRacingChanges puts the store in the states that
// an add finds, once its reaction is stored, when a removal or a delete
// raced with it, which the black-box tests reach only by chance: the add
// puts back the emoji that the removal of its last other reaction took
// out, and takes itself back from a message deleted meanwhile.
func TestReactions_AddAfterRacingChanges(t *testing.T) {
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" {
		// The store on FerretDB 1.x counts reactions its own way, which
		// wants the locks (and so Redis) that this test does without.
		t.Skip("PARLEY_TEST_MONGO_URI is not set: this test needs a real engine (scripts/with-test-services sets it)")
	}
	ctx := context.Background()
	db := testDatabase(t)
	if err := Prepare(ctx, slog.New(slog.DiscardHandler), db); err != nil {
		t.Fatal(err)
	}
	s := &Service{log: slog.New(slog.DiscardHandler), store: newStore(db, nil, nil, "", time.Now), now: time.Now}
	c := &chatDoc{ID: bson.NewObjectID(), Type: typeGroup, Participants: []participantDoc{{UserID: 1}, {UserID: 2}}}
	newMessage := func(t *testing.T, emojis ...string) *messageDoc {
		t.Helper()
		id := bson.NewObjectID()
		m := &messageDoc{ID: id, ChatID: c.ID, SenderID: 1, Text: "hi", SentAt: time.Now(), Seq: 1, Emojis: emojis,
			IdemKey: id.Hex(), SeqKey: id.Hex()}
		if _, err := s.store.messages.InsertOne(ctx, m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	add := func(t *testing.T, m *messageDoc, userID int, emoji string) {
		t.Helper()
		if err := s.store.addReaction(ctx, &reactionDoc{ChatID: c.ID, MessageID: m.ID, UserID: userID, Emoji: emoji}); err != nil {
			t.Fatalf("addReaction: %v", err)
		}
	}

	t.Run("emoji taken out", func(t *testing.T) {
		// The add found 🔥 among the emojis (another member's), the
		// other member took its reaction back and, seeing no other, 🔥
		// out, before this add stored its own.
		m := newMessage(t)
		add(t, m, 2, "🔥")
		got, err := s.reactionAdded(ctx, c, m, 2, "🔥")
		if err != nil {
			t.Fatalf("reactionAdded: %v", err)
		}
		if len(got) != 1 || got[0].GetEmoji() != "🔥" || got[0].GetCount() != 1 || !got[0].GetMine() {
			t.Errorf("reactionAdded answered %v, want 🔥 1 mine", got)
		}
		now, err := s.store.getMessage(ctx, c.ID, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(now.Emojis, []string{"🔥"}) || now.ReactVer != 1 {
			t.Errorf("message's emojis %q, version %d; want 🔥 back, version 1", now.Emojis, now.ReactVer)
		}
	})

	t.Run("message deleted", func(t *testing.T) {
		// The add found the message whole; the delete dropped its
		// reactions before this add stored its own.
		m := newMessage(t, "🔥")
		if _, err := s.store.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: m.ID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "deletedAt", Value: time.Now()}}}}); err != nil {
			t.Fatal(err)
		}
		add(t, m, 2, "🔥")
		if _, err := s.reactionAdded(ctx, c, m, 2, "🔥"); !errors.Is(err, errReactDeleted) {
			t.Errorf("reactionAdded = %v, want %v", err, errReactDeleted)
		}
		if n, err := s.store.reactions.CountDocuments(ctx, bson.D{{Key: "messageId", Value: m.ID}}); err != nil || n != 0 {
			t.Errorf("%d reactions (%v) left to the deleted message, want 0", n, err)
		}
	})
}
