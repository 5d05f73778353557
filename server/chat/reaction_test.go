package chat_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// manyEmoji are distinct emoji, more than a message takes.
var manyEmoji = []string{
	"😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎", "😍", "😘", "🥰",
	"😗", "😙", "😚", "🙂", "🤗", "🤩", "🤔", "🫡", "🤨", "😐", "😑", "😶", "🙄", "😏", "😣",
}

// reactionsText writes reactions as "👍2*,❤️1": each emoji with its
// count, and a star where it is the viewer's.
func reactionsText(rs []*parleyv1.Reaction) string {
	var parts []string
	for _, r := range rs {
		s := fmt.Sprintf("%s%d", r.GetEmoji(), r.GetCount())
		if r.GetMine() {
			s += "*"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}

func tryReact(u *user, chatID, msgID, emoji string) ([]*parleyv1.Reaction, error) {
	res, err := u.msgs.AddReaction(context.Background(), req(u, &parleyv1.AddReactionRequest{ChatId: chatID, MessageId: msgID, Emoji: emoji}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetReactions(), nil
}

// react adds u's reaction and checks the reactions it answers.
func react(t testing.TB, u *user, chatID, msgID, emoji, want string) {
	t.Helper()
	rs, err := tryReact(u, chatID, msgID, emoji)
	if err != nil {
		t.Fatalf("AddReaction(%s): %v", emoji, err)
	}
	if got := reactionsText(rs); got != want {
		t.Fatalf("AddReaction(%s) answered %q, want %q", emoji, got, want)
	}
}

// unreact removes u's reaction and checks the reactions it answers.
func unreact(t testing.TB, u *user, chatID, msgID, emoji, want string) {
	t.Helper()
	res, err := u.msgs.RemoveReaction(context.Background(), req(u, &parleyv1.RemoveReactionRequest{ChatId: chatID, MessageId: msgID, Emoji: emoji}))
	if err != nil {
		t.Fatalf("RemoveReaction(%s): %v", emoji, err)
	}
	if got := reactionsText(res.Msg.GetReactions()); got != want {
		t.Fatalf("RemoveReaction(%s) answered %q, want %q", emoji, got, want)
	}
}

// listedReactions returns the reactions of the message as u lists it,
// and whether it is deleted.
func listedReactions(t testing.TB, u *user, chatID, msgID string) (string, bool) {
	t.Helper()
	ms, err := servertest.ListMessagesAfter(u.msgs, u.token, chatID, 0)
	if err != nil {
		t.Fatalf("ListMessages: %v", err)
	}
	for _, m := range ms {
		if m.GetId() == msgID {
			return reactionsText(m.GetReactions()), m.GetDeleted()
		}
	}
	t.Fatalf("message %s not listed", msgID)
	return "", false
}

// wantListed fails unless u lists the message with the reactions want.
func wantListed(t testing.TB, u *user, chatID, msgID, want string) {
	t.Helper()
	if got, _ := listedReactions(t, u, chatID, msgID); got != want {
		t.Errorf("user %d lists the reactions %q, want %q", u.id, got, want)
	}
}

// whoReacted pages through ListReactions, size at a time, and returns
// the users and the number of pages.
func whoReacted(t testing.TB, u *user, chatID, msgID, emoji string, size int32) ([]int32, int) {
	t.Helper()
	var ids []int32
	token, pages := "", 0
	for {
		res, err := u.msgs.ListReactions(context.Background(), req(u, &parleyv1.ListReactionsRequest{
			ChatId: chatID, MessageId: msgID, Emoji: emoji, PageSize: size, PageToken: token,
		}))
		if err != nil {
			t.Fatalf("ListReactions: %v", err)
		}
		pages++
		ids = append(ids, res.Msg.GetUserIds()...)
		if token = res.Msg.GetNextPageToken(); token == "" {
			return ids, pages
		}
		if pages > 100 {
			t.Fatalf("ListReactions does not end: %v", ids)
		}
	}
}

// storedEmojis returns the message document's emojis.
func storedEmojis(t testing.TB, srv *servertest.Server, msgID string) []string {
	t.Helper()
	id, err := bson.ObjectIDFromHex(msgID)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Emojis []string `bson:"emojis"`
	}
	if err := srv.App.Mongo().Collection("messages").FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
		t.Fatalf("read message: %v", err)
	}
	return doc.Emojis
}

// wantStoredReactions fails unless the reactions collection holds n
// reactions to the message.
func wantStoredReactions(t testing.TB, srv *servertest.Server, msgID string, n int64) {
	t.Helper()
	id, err := bson.ObjectIDFromHex(msgID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := srv.App.Mongo().Collection("reactions").CountDocuments(context.Background(), bson.D{{Key: "messageId", Value: id}})
	if err != nil {
		t.Fatalf("count reactions: %v", err)
	}
	if got != n {
		t.Errorf("the store holds %d reactions to message %s, want %d", got, msgID, n)
	}
}

func TestReactions_AddRemoveList(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b, c, d := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, a, "reacting", b, c, d).GetId()
			m := send(t, a, g, "react to me").GetId()
			other := send(t, b, g, "no reactions here").GetId()

			react(t, a, g, m, "👍", "👍1*")
			react(t, b, g, m, "👍", "👍2*")
			react(t, b, g, m, "❤️", "👍2*,❤️1*")
			// Equal counts: the emoji used first comes first.
			react(t, c, g, m, "❤️", "👍2,❤️2*")
			react(t, c, g, m, "🎉", "👍2,❤️2*,🎉1*")
			// The most used first.
			react(t, d, g, m, "❤️", "❤️3*,👍2,🎉1")
			// Adding again changes nothing.
			react(t, b, g, m, "👍", "❤️3*,👍2*,🎉1")

			for _, v := range []struct {
				u    *user
				want string
			}{{a, "❤️3,👍2*,🎉1"}, {b, "❤️3*,👍2*,🎉1"}, {c, "❤️3*,👍2,🎉1*"}, {d, "❤️3*,👍2,🎉1"}} {
				wantListed(t, v.u, g, m, v.want)
			}
			wantListed(t, a, g, other, "")

			unreact(t, c, g, m, "🎉", "❤️3*,👍2")
			unreact(t, c, g, m, "🎉", "❤️3*,👍2")
			// Removing a reaction the caller did not make changes nothing.
			unreact(t, a, g, m, "❤️", "❤️3,👍2*")
			wantListed(t, d, g, m, "❤️3*,👍2")
			if got, want := storedEmojis(t, srv, m), []string{"👍", "❤️"}; !slices.Equal(got, want) {
				t.Errorf("the message's emojis = %q, want %q", got, want)
			}

			// Who reacted, in the order they did, a page at a time.
			ids, pages := whoReacted(t, a, g, m, "❤️", 2)
			if want := []int32{b.id, c.id, d.id}; !slices.Equal(ids, want) || pages != 2 {
				t.Errorf("ListReactions(❤️) by 2 = %v in %d pages, want %v in 2", ids, pages, want)
			}
			ids, pages = whoReacted(t, d, g, m, "👍", 0)
			if want := []int32{a.id, b.id}; !slices.Equal(ids, want) || pages != 1 {
				t.Errorf("ListReactions(👍) = %v in %d pages, want %v in 1", ids, pages, want)
			}
			if ids, _ := whoReacted(t, d, g, m, "🎉", 0); len(ids) != 0 {
				t.Errorf("ListReactions(🎉) after its removal = %v, want none", ids)
			}
			_, err := a.msgs.ListReactions(ctx, req(a, &parleyv1.ListReactionsRequest{ChatId: g, MessageId: m, Emoji: "❤️", PageToken: "bm90IGEgdG9rZW4"}))
			wantCode(t, err, connect.CodeInvalidArgument)

			// A deleted message loses its reactions and takes no more.
			if _, err := a.msgs.DeleteMessage(ctx, req(a, &parleyv1.DeleteMessageRequest{ChatId: g, MessageId: m})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			if got, deleted := listedReactions(t, b, g, m); got != "" || !deleted {
				t.Errorf("the deleted message lists the reactions %q (deleted %v), want none", got, deleted)
			}
			_, err = tryReact(b, g, m, "👍")
			wantCode(t, err, connect.CodeFailedPrecondition)
			if !strings.Contains(err.Error(), "the message was deleted") {
				t.Errorf("AddReaction to a deleted message: %v, want it to say the message was deleted", err)
			}
			unreact(t, b, g, m, "👍", "")
			if ids, _ := whoReacted(t, a, g, m, "❤️", 0); len(ids) != 0 {
				t.Errorf("ListReactions of a deleted message = %v, want none", ids)
			}
			if got := storedEmojis(t, srv, m); len(got) != 0 {
				t.Errorf("the deleted message's emojis = %q, want none", got)
			}
			wantStoredReactions(t, srv, m, 0)

			// A delete that stopped before it dropped the reactions: the
			// message shows none, and the delete, repeated, drops them.
			react(t, b, g, other, "👀", "👀1*")
			id, _ := bson.ObjectIDFromHex(other)
			if _, err := srv.App.Mongo().Collection("messages").UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "deletedAt", Value: time.Now()}}}}); err != nil {
				t.Fatal(err)
			}
			wantListed(t, c, g, other, "")
			if ids, _ := whoReacted(t, c, g, other, "👀", 0); len(ids) != 0 {
				t.Errorf("ListReactions of a deleted message = %v, want none", ids)
			}
			wantStoredReactions(t, srv, other, 1)
			if _, err := b.msgs.DeleteMessage(ctx, req(b, &parleyv1.DeleteMessageRequest{ChatId: g, MessageId: other})); err != nil {
				t.Fatalf("DeleteMessage again: %v", err)
			}
			wantStoredReactions(t, srv, other, 0)
		})
	}
}

func TestReactions_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	admin, member, removed, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	g := group(t, admin, "g", member, removed).GetId()
	m := send(t, member, g, "hello").GetId()
	elsewhere := send(t, outsider, group(t, outsider, "other").GetId(), "mine").GetId()
	if _, err := admin.chats.RemoveParticipant(ctx, req(admin, &parleyv1.RemoveParticipantRequest{ChatId: g, UserId: removed.id})); err != nil {
		t.Fatalf("RemoveParticipant: %v", err)
	}

	react(t, member, g, m, "👍", "👍1*")
	react(t, admin, g, m, "🔥", "👍1,🔥1*")

	for _, u := range []*user{outsider, removed} {
		_, err := tryReact(u, g, m, "👍")
		wantCode(t, err, connect.CodeNotFound)
		_, err = u.msgs.RemoveReaction(ctx, req(u, &parleyv1.RemoveReactionRequest{ChatId: g, MessageId: m, Emoji: "👍"}))
		wantCode(t, err, connect.CodeNotFound)
		_, err = u.msgs.ListReactions(ctx, req(u, &parleyv1.ListReactionsRequest{ChatId: g, MessageId: m, Emoji: "👍"}))
		wantCode(t, err, connect.CodeNotFound)
	}
	// A message of another chat, and one that does not exist.
	for _, id := range []string{elsewhere, "0123456789abcdef01234567"} {
		_, err := tryReact(member, g, id, "👍")
		wantCode(t, err, connect.CodeNotFound)
	}
	for _, emoji := range []string{"a", "👍👍", "", "#", "1", "👍 ", strings.Repeat("👍", 9)} {
		_, err := tryReact(member, g, m, emoji)
		wantCode(t, err, connect.CodeInvalidArgument)
	}
	// One emoji of several code points is one emoji.
	react(t, member, g, m, "👩🏽‍💻", "👍1*,🔥1,👩🏽‍💻1*")
	react(t, member, g, m, "#️⃣", "👍1*,🔥1,👩🏽‍💻1*,#️⃣1*")
	wantListed(t, admin, g, m, "👍1,🔥1*,👩🏽‍💻1,#️⃣1")

	// A private chat that is still a request: both members may react.
	starter, peer := newUser(t, srv, p), newUser(t, srv, p)
	private := servertest.PrivateChat(t, starter.chats, starter.token, peer.id).GetId()
	pm := send(t, starter, private, "hi?").GetId()
	react(t, peer, private, pm, "👋", "👋1*")
	react(t, starter, private, pm, "👋", "👋2*")
}

func TestReactions_Limit(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[1]
	a, b := newUser(t, srv, p), newUser(t, srv, p)
	g := group(t, a, "g", b).GetId()
	m := send(t, a, g, "so many feelings").GetId()
	for _, e := range manyEmoji[:chat.MaxReactionEmoji] {
		if _, err := tryReact(a, g, m, e); err != nil {
			t.Fatalf("AddReaction(%s): %v", e, err)
		}
	}
	_, err := tryReact(b, g, m, manyEmoji[chat.MaxReactionEmoji])
	wantCode(t, err, connect.CodeFailedPrecondition)
	if !strings.Contains(err.Error(), "at most 20 different emoji") {
		t.Errorf("AddReaction past the limit: %v, want it to name the limit", err)
	}
	// An emoji in use still takes more members.
	rs, err := tryReact(b, g, m, manyEmoji[3])
	if err != nil {
		t.Fatalf("AddReaction of an emoji in use: %v", err)
	}
	if len(rs) != chat.MaxReactionEmoji || reactionsText(rs[:1]) != manyEmoji[3]+"2*" {
		t.Errorf("AddReaction of an emoji in use answered %q, want %s first of %d", reactionsText(rs), manyEmoji[3]+"2*", chat.MaxReactionEmoji)
	}
	// Removing the last reaction with an emoji frees its place.
	res, err := a.msgs.RemoveReaction(context.Background(), req(a, &parleyv1.RemoveReactionRequest{ChatId: g, MessageId: m, Emoji: manyEmoji[5]}))
	if err != nil {
		t.Fatalf("RemoveReaction: %v", err)
	}
	if rs := res.Msg.GetReactions(); len(rs) != chat.MaxReactionEmoji-1 || strings.Contains(reactionsText(rs), manyEmoji[5]) {
		t.Errorf("RemoveReaction(%s) answered %q, want the %d others", manyEmoji[5], reactionsText(rs), chat.MaxReactionEmoji-1)
	}
	if _, err := tryReact(b, g, m, manyEmoji[chat.MaxReactionEmoji]); err != nil {
		t.Fatalf("AddReaction after a removal freed a place: %v", err)
	}
	_, err = tryReact(b, g, m, manyEmoji[5])
	wantCode(t, err, connect.CodeFailedPrecondition)
	if got := storedEmojis(t, srv, m); len(got) != chat.MaxReactionEmoji || slices.Contains(got, manyEmoji[5]) {
		t.Errorf("the message's emojis = %q, want %d without %s", got, chat.MaxReactionEmoji, manyEmoji[5])
	}

	// Emoji that no reaction uses, as requests that ended before they
	// stored their reactions leave them, do not count.
	m2 := send(t, a, g, "left behind").GetId()
	id, _ := bson.ObjectIDFromHex(m2)
	if _, err := srv.App.Mongo().Collection("messages").UpdateOne(context.Background(), bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "emojis", Value: manyEmoji[:chat.MaxReactionEmoji]}}}}); err != nil {
		t.Fatal(err)
	}
	react(t, b, g, m2, manyEmoji[25], manyEmoji[25]+"1*")
	if got := storedEmojis(t, srv, m2); !slices.Equal(got, manyEmoji[25:26]) {
		t.Errorf("the message's emojis = %q, want only %s", got, manyEmoji[25])
	}
}

func TestReactions_Concurrent(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // minutes on FerretDB 1.x
	// A database of its own: the embedded FerretDB 1.x scans the
	// collections on every write, and serializes a message's writes.
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	const members = 12
	users := make([]*user, members)
	for i := range users {
		users[i] = newUser(t, srv, p)
	}
	g := group(t, users[0], "crowd", users[1:]...).GetId()

	t.Run("same emoji", func(t *testing.T) {
		m := send(t, users[0], g, "everyone likes this").GetId()
		var wg sync.WaitGroup
		for range 2 { // and each again, at the same time
			for _, u := range users {
				wg.Go(func() {
					if _, err := tryReact(u, g, m, "👍"); err != nil {
						t.Errorf("AddReaction: %v", err)
					}
				})
			}
		}
		wg.Wait()
		wantListed(t, users[1], g, m, fmt.Sprintf("👍%d*", members))
		if got := storedEmojis(t, srv, m); !slices.Equal(got, []string{"👍"}) {
			t.Errorf("the message's emojis = %q, want one 👍", got)
		}
	})

	t.Run("distinct emoji past the limit", func(t *testing.T) {
		m := send(t, users[0], g, "pick one").GetId()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var took []string
		for i, e := range manyEmoji {
			wg.Go(func() {
				_, err := tryReact(users[i%members], g, m, e)
				switch {
				case err == nil:
					mu.Lock()
					took = append(took, e)
					mu.Unlock()
				case connect.CodeOf(err) == connect.CodeFailedPrecondition:
				default:
					t.Errorf("AddReaction(%s): %v", e, err)
				}
			})
		}
		wg.Wait()
		if len(took) != chat.MaxReactionEmoji {
			t.Errorf("%d distinct emoji taken, want %d", len(took), chat.MaxReactionEmoji)
		}
		got, _ := listedReactions(t, users[0], g, m)
		if n := strings.Count(got, ",") + 1; n != len(took) {
			t.Errorf("listed %d emoji (%s), want the %d taken", n, got, len(took))
		}
		if stored := storedEmojis(t, srv, m); len(stored) != len(took) {
			t.Errorf("the message's emojis = %q, want the %d taken", stored, len(took))
		}
	})

	// The last reaction with an emoji taken back while another member
	// adds one: the emoji stays in the message's emojis, which a message
	// with no other emoji needs to list it at all.
	t.Run("add racing the last removal", func(t *testing.T) {
		x, y := users[2], users[3]
		for round := range 25 {
			m := send(t, x, g, fmt.Sprint("round ", round)).GetId()
			react(t, x, g, m, "🔥", "🔥1*")
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, err := x.msgs.RemoveReaction(context.Background(), req(x, &parleyv1.RemoveReactionRequest{ChatId: g, MessageId: m, Emoji: "🔥"})); err != nil {
					t.Errorf("RemoveReaction: %v", err)
				}
			})
			wg.Go(func() {
				if _, err := tryReact(y, g, m, "🔥"); err != nil {
					t.Errorf("AddReaction: %v", err)
				}
			})
			wg.Wait()
			if got, _ := listedReactions(t, x, g, m); got != "🔥1" {
				t.Fatalf("round %d: listed %q, want y's 🔥1", round, got)
			}
			if got := storedEmojis(t, srv, m); !slices.Equal(got, []string{"🔥"}) {
				t.Fatalf("round %d: the message's emojis = %q, want 🔥", round, got)
			}
		}
	})
}

// nextReactions returns the next reactions_changed event.
func nextReactions(t testing.TB, events <-chan *parleyv1.Event) *parleyv1.ReactionsChanged {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if r := ev.GetReactionsChanged(); r != nil {
				if ev.GetCursor() == "" {
					t.Errorf("reactions_changed without a cursor")
				}
				return r
			}
		case <-timeout:
			t.Fatal("no reactions_changed event")
			return nil
		}
	}
}

func TestReactions_LiveAcrossInstances(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			reactor, watcher := newUser(t, a, p), newUser(t, a, p)
			g := group(t, reactor, "live", watcher).GetId()
			msg := send(t, reactor, g, "watch this")
			m := msg.GetId()
			onB := &person{id: watcher.id, token: watcher.token, c: servertest.NewClients(b, p)}
			events, stop := onB.online(t)
			defer stop()

			var version int64
			check := func(ev *parleyv1.ReactionsChanged, by *user, emoji string, added bool, want string) {
				t.Helper()
				if ev.GetChatId() != g || ev.GetMessageId() != m || ev.GetSeq() != msg.GetSeq() {
					t.Errorf("event for chat %s message %s seq %d, want %s %s %d", ev.GetChatId(), ev.GetMessageId(), ev.GetSeq(), g, m, msg.GetSeq())
				}
				if ev.GetUserId() != by.id || ev.GetEmoji() != emoji || ev.GetAdded() != added {
					t.Errorf("event by %d with %s added %v, want %d with %s added %v", ev.GetUserId(), ev.GetEmoji(), ev.GetAdded(), by.id, emoji, added)
				}
				if got := reactionsText(ev.GetReactions()); got != want {
					t.Errorf("event's reactions %q, want %q", got, want)
				}
				if ev.GetVersion() <= version {
					t.Errorf("event's version %d after %d, want it to grow", ev.GetVersion(), version)
				}
				version = ev.GetVersion()
			}

			react(t, reactor, g, m, "👍", "👍1*")
			check(nextReactions(t, events), reactor, "👍", true, "👍1")
			// A repeated add changes nothing, but is announced again, as
			// a new version (a retry's announcement, see
			// TestRetry_AnnouncesWhatTheFailedCallDidNot).
			react(t, reactor, g, m, "👍", "👍1*")
			check(nextReactions(t, events), reactor, "👍", true, "👍1")
			react(t, watcher, g, m, "❤️", "👍1,❤️1*")
			check(nextReactions(t, events), watcher, "❤️", true, "👍1,❤️1")
			unreact(t, reactor, g, m, "👍", "❤️1")
			check(nextReactions(t, events), reactor, "👍", false, "❤️1")
		})
	}
}
