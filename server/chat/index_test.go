package chat

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/parley-chat/parley/server/enginetest"
	"github.com/parley-chat/parley/server/mongoindex"
)

// TestIndexes_HotPaths loads enough documents that the engine's planner
// prefers an index where one fits, then explains every document query of
// SendMessage, ListMessages, ListChats, MarkRead, MarkDelivered and the
// reaction methods, and fails when a plan reads a collection without an
// index. It needs a real engine (PARLEY_TEST_MONGO_URI: FerretDB 2 +
// DocumentDB or MongoDB); FerretDB 1.x answers every query by a scan.
func TestIndexes_HotPaths(t *testing.T) {
	db := enginetest.Database(t, "explain")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Prepare(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), db); err != nil {
		t.Fatal(err)
	}
	s := newStore(db, nil, nil, "", time.Now)

	// 100 chats of 10 members each, 10k messages, 2k positions, 10k
	// reactions (to the last 20 messages of each chat).
	const chats, members, perChat = 100, 10, 100
	var chatDocs []any
	var msgs, poss, reacts []any
	var reacted []bson.ObjectID // the reacted messages of the test chat
	ids := make([]bson.ObjectID, chats)
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i := range chats {
		ids[i] = bson.NewObjectID()
		c := chatDoc{ID: ids[i], Type: typeGroup, Name: "g", MembersVersion: 1, CreatedAt: now, UpdatedAt: now.Add(time.Duration(i) * time.Millisecond), PairKey: "g:" + ids[i].Hex(),
			LastMessage: &lastMessageDoc{Seq: perChat, SentAt: now}}
		for u := range members {
			uid := i*members/2 + u // chats overlap in members
			c.Participants = append(c.Participants, participantDoc{UserID: uid, Role: roleMember})
			for _, kind := range []string{kindRead, kindDelivered} {
				poss = append(poss, positionDoc{ID: positionID(ids[i], uid, kind), ChatID: ids[i], UserID: uid, Kind: kind, Seq: perChat / 2})
			}
		}
		chatDocs = append(chatDocs, c)
		for n := int64(1); n <= perChat; n++ {
			sender := c.Participants[n%members].UserID
			cid := fmt.Sprintf("m%d", n)
			m := messageDoc{ID: bson.NewObjectID(), ChatID: ids[i], SenderID: sender, Text: "hello", Words: []string{"hello", fmt.Sprintf("w%d", n)}, SentAt: now,
				Status: statusSent, Seq: n, ClientMessageID: cid, IdemKey: idemKey(ids[i], sender, cid), SeqKey: seqKey(ids[i], n)}
			if n > perChat-20 {
				if i == chats/2 {
					reacted = append(reacted, m.ID)
				}
				for u, p := range c.Participants[:5] {
					r := reactionDoc{ChatID: ids[i], MessageID: m.ID, UserID: p.UserID, Emoji: []string{"👍", "❤️"}[u%2], At: now.Add(time.Duration(u) * time.Millisecond)}
					r.ID = reactionID(r.MessageID, r.UserID, r.Emoji)
					reacts = append(reacts, r)
				}
			}
			msgs = append(msgs, m)
		}
	}
	for _, x := range []struct {
		c    *mongo.Collection
		docs []any
	}{{s.chats, chatDocs}, {s.messages, msgs}, {s.positions, poss}, {s.reactions, reacts}} {
		if _, err := x.c.InsertMany(ctx, x.docs); err != nil {
			t.Fatal(err)
		}
	}

	chat, user := ids[chats/2], chats/2*members/2+1
	seq := int64(perChat / 2)
	me := member{ChatID: chat, UserID: user, ReadSeq: seq / 2}
	page, pageOpts := listChatsQuery(user, chatSet{}, nil, 51)
	page2, _ := listChatsQuery(user, chatSet{notIn: ids[:3]}, &chatPage{UpdatedAt: now.Add(50 * time.Millisecond), ID: chat}, 51)
	archivedPage, _ := listChatsQuery(user, chatSet{in: ids[:3]}, nil, 51)
	msgPage, _, _, _ := pageQuery(chat, nil, &seq, nil, perChat, 67, 50)
	msgLatest, _, _, _ := pageQuery(chat, nil, nil, &seq, perChat, 67, 50)
	reactPage, _ := listReactionsQuery(reacted[0], "👍", &reactionPage{At: now, UserID: user}, 51)
	posIDs := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{positionID(chat, user, kindRead), positionID(chat, user, kindDelivered)}}}}}
	var listed []chatDoc
	cur, err := s.chats.Find(ctx, page, pageOpts)
	if err != nil {
		t.Fatal(err)
	}
	if err := cur.All(ctx, &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) < 2 {
		t.Fatalf("the test user is in %d chats; want several", len(listed))
	}
	byChat := map[bson.ObjectID]member{}
	for _, c := range listed {
		byChat[c.ID] = member{ChatID: c.ID, UserID: user, ReadSeq: perChat / 2}
	}

	for _, q := range []struct {
		name    string
		cmd     bson.D
		control bool // a query that no index answers, to show the check can fail
	}{
		{"access: chat by id", find("chats", bson.D{{Key: "_id", Value: chat}}, nil, 1), false},
		{"access: positions by id", find("positions", posIDs, nil, 0), false},
		{"send: message by idempotency key", find("messages", bson.D{{Key: "idemKey", Value: idemKey(chat, user, "m7")}}, nil, 1), false},
		{"send: largest seq", find("messages", bson.D{{Key: "chatId", Value: chat}}, bson.D{{Key: "seq", Value: -1}}, 1), false},
		{"list messages: after a seq", find("messages", msgPage, bson.D{{Key: "seq", Value: 1}}, 51), false},
		{"list messages: latest", find("messages", msgLatest, bson.D{{Key: "seq", Value: -1}}, 51), false},
		{"list messages: positions of a chat", find("positions", bson.D{{Key: "chatId", Value: chat}}, nil, 0), false},
		{"list chats: first page", find("chats", page, bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}, 51), false},
		{"list chats: next page", find("chats", page2, bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}, 51), false},
		{"list chats: unread counts", bson.D{{Key: "aggregate", Value: "messages"}, {Key: "pipeline", Value: unreadPipeline(listed, byChat, false)}, {Key: "cursor", Value: bson.D{}}}, false},
		{"list chats: unread mentions", bson.D{{Key: "aggregate", Value: "messages"}, {Key: "pipeline", Value: unreadPipeline(listed, byChat, true)}, {Key: "cursor", Value: bson.D{}}}, false},
		{"mark read: unread count", bson.D{{Key: "count", Value: "messages"}, {Key: "query", Value: unreadFilter(chat, me)}}, false},
		{"get chat: unread mentions", bson.D{{Key: "count", Value: "messages"}, {Key: "query", Value: append(unreadFilter(chat, me), mentioning(user))}}, false},
		{"list chats: archived", find("chats", archivedPage, bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}, 51), false},
		{"list chats: pinned and archived", find("chatSettings", bson.D{{Key: "userId", Value: user}, {Key: "$or", Value: bson.A{
			bson.D{{Key: "archived", Value: true}}, bson.D{{Key: "pinnedAt", Value: bson.D{{Key: "$exists", Value: true}}}},
		}}}, nil, 0), false},
		{"list chats: settings", find("chatSettings", bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{settingsID(chat, user)}}}}}, nil, 0), false},
		{"list messages: hidden", find("hiddenMessages", bson.D{{Key: "chatId", Value: chat}, {Key: "userId", Value: user},
			{Key: "seq", Value: bson.D{{Key: "$gte", Value: 1}, {Key: "$lte", Value: 50}}}}, nil, 0), false},
		{"search: a prefix in the user's chats", searchCmd([]string{"hel"}, ids[:10]), false},
		{"search: two words", searchCmd([]string{"hello", "wor"}, ids[:10]), false},
		{"list messages: quoted originals", find("messages", bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{msgs[7].(messageDoc).ID, msgs[9].(messageDoc).ID}}}}, {Key: "chatId", Value: ids[0]}}, nil, 0), false},
		{"control: by text, which no index covers", find("messages", bson.D{{Key: "text", Value: "nobody wrote this"}}, nil, 0), true},
		{"mark: position by id", find("positions", bson.D{{Key: "_id", Value: positionID(chat, user, kindRead)}}, nil, 1), false},
		{"render: reactions of a page", bson.D{{Key: "aggregate", Value: "reactions"}, {Key: "pipeline", Value: reactionsPipeline(reacted, user)}, {Key: "cursor", Value: bson.D{}}}, false},
		{"list reactions: next page", find("reactions", reactPage, bson.D{{Key: "at", Value: 1}, {Key: "userId", Value: 1}}, 51), false},
		{"remove reaction: emoji still used", find("reactions", bson.D{{Key: "messageId", Value: reacted[0]}, {Key: "emoji", Value: "👍"}}, nil, 1), false},
	} {
		t.Run(q.name, func(t *testing.T) {
			var plan bson.Raw
			plan, err := db.RunCommand(ctx, bson.D{{Key: "explain", Value: q.cmd}, {Key: "verbosity", Value: "queryPlanner"}}).Raw()
			if err != nil {
				t.Fatalf("explain: %v", err)
			}
			reason, err := mongoindex.Unindexed(plan)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case q.control && reason == "":
				t.Errorf("the check finds an index in a plan that has none: %s", plan)
			case !q.control && reason != "":
				t.Errorf("%s\nplan: %s", reason, plan)
			}
		})
	}
}

func searchCmd(words []string, chats []bson.ObjectID) bson.D {
	filter, _ := searchQuery(words, chats, &searchPage{SentAt: time.Now(), ID: bson.NewObjectID()}, 21)
	return find("messages", filter, bson.D{{Key: "sentAt", Value: -1}, {Key: "_id", Value: -1}}, 21)
}

func find(coll string, filter, sort bson.D, limit int64) bson.D {
	cmd := bson.D{{Key: "find", Value: coll}, {Key: "filter", Value: filter}}
	if sort != nil {
		cmd = append(cmd, bson.E{Key: "sort", Value: sort})
	}
	if limit > 0 {
		cmd = append(cmd, bson.E{Key: "limit", Value: limit})
	}
	return cmd
}
