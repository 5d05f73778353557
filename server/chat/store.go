package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/mongoindex"
)

// Chat types and roles as the documents spell them (the customer's model).
const (
	typePrivate = "private"
	typeGroup   = "group"
	roleAdmin   = "admin"
	roleMember  = "member"
)

// chatDoc is a document of the chats collection, in the customer's shape.
// pairKey is Parley's: "p:<low id>:<high id>" for a private chat, so that a
// unique index allows one per pair, and "g:<chat id>" for a group.
type chatDoc struct {
	ID           bson.ObjectID    `bson:"_id"`
	Name         string           `bson:"chatName,omitempty"`
	Type         string           `bson:"chatType"`
	LastMessage  *lastMessageDoc  `bson:"lastMessage,omitempty"`
	Participants []participantDoc `bson:"participants"`
	CreatedAt    time.Time        `bson:"createdAt"`
	UpdatedAt    time.Time        `bson:"updatedAt"`
	PairKey      string           `bson:"pairKey"`
}

type participantDoc struct {
	UserID int    `bson:"user_id"`
	Role   string `bson:"role"`
}

type lastMessageDoc struct {
	MessageID bson.ObjectID `bson:"message_id"`
	SenderID  int           `bson:"sender_id"`
	Preview   string        `bson:"preview"`
	Seq       int64         `bson:"seq"`
	SentAt    time.Time     `bson:"sentAt"`
}

// memberDoc is a document of the members collection: one per member of a
// chat, keyed "<chat id>:<user id>". It is the authority on membership and
// roles; a chat's participants array is a copy of it for readers of the
// customer's model. Deleting it removes the member at once.
//
// The member's read and delivered positions live in positions documents of
// their own, because FerretDB rewrites a whole document on every update: a
// role change and a MarkRead on one document could undo each other.
type memberDoc struct {
	ID       string        `bson:"_id"`
	ChatID   bson.ObjectID `bson:"chatId"`
	UserID   int           `bson:"userId"`
	Role     string        `bson:"role"`
	JoinedAt time.Time     `bson:"joinedAt"`
	// Filled from the positions collection.
	ReadSeq      int64 `bson:"-"`
	DeliveredSeq int64 `bson:"-"`
}

// Kinds of position.
const (
	kindRead      = "read"
	kindDelivered = "delivered"
)

// positionDoc is a document of the positions collection: how far one
// member has read, or received, one chat. Its only changing field is seq,
// which only grows (see raise).
type positionDoc struct {
	ID     string        `bson:"_id"`
	ChatID bson.ObjectID `bson:"chatId"`
	UserID int           `bson:"userId"`
	Kind   string        `bson:"kind"`
	Seq    int64         `bson:"seq"`
}

func positionID(chatID bson.ObjectID, userID int, kind string) string {
	return memberID(chatID, userID) + ":" + kind
}

func memberID(chatID bson.ObjectID, userID int) string {
	return chatID.Hex() + ":" + strconv.Itoa(userID)
}

func privateKey(a, b int) string {
	lo, hi := min(a, b), max(a, b)
	return fmt.Sprintf("p:%d:%d", lo, hi)
}

// store keeps chats, members, positions and messages in MongoDB.
// Correctness rests on single inserts and unique indexes, and on never
// letting two writers update one document at once: FerretDB, unlike
// MongoDB, rewrites the whole document on each update without isolation,
// so concurrent updates of one document (even of different fields) lose
// writes there. Every update of a document that more than one request may
// change holds a short Redis lock on it (see locked).
type store struct {
	locks       *doclock.Locks
	rdb         redis.UniversalClient
	redisPrefix string

	chats     *mongo.Collection
	members   *mongo.Collection
	positions *mongo.Collection
	messages  *mongo.Collection
	now       func() time.Time
}

func newStore(db *mongo.Database, rdb redis.UniversalClient, redisPrefix string, now func() time.Time) *store {
	var locks *doclock.Locks
	if rdb != nil {
		locks = doclock.New(rdb, redisPrefix+"lock:")
	}
	return &store{
		locks:       locks,
		rdb:         rdb,
		redisPrefix: redisPrefix,
		chats:       db.Collection("chats"),
		members:     db.Collection("members"),
		positions:   db.Collection("positions"),
		messages:    db.Collection("messages"),
		now:         now,
	}
}

// EnsureIndexes creates the indexes the chat store relies on. It is
// idempotent and safe to run from every instance at start-up.
func EnsureIndexes(ctx context.Context, db *mongo.Database) error {
	s := newStore(db, nil, "", time.Now)
	for _, x := range []struct {
		c      *mongo.Collection
		models []mongo.IndexModel
	}{
		{s.chats, []mongo.IndexModel{
			{Keys: bson.D{{Key: "pairKey", Value: 1}}, Options: options.Index().SetUnique(true).SetName("pairKey_unique")},
			{Keys: bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}, Options: options.Index().SetName("updatedAt_id")},
		}},
		{s.messages, messageIndexes},
		{s.positions, []mongo.IndexModel{
			{Keys: bson.D{{Key: "chatId", Value: 1}}, Options: options.Index().SetName("chatId")},
			{Keys: bson.D{{Key: "userId", Value: 1}, {Key: "kind", Value: 1}}, Options: options.Index().SetName("userId_kind")},
		}},
		{s.members, []mongo.IndexModel{
			{Keys: bson.D{{Key: "userId", Value: 1}, {Key: "chatId", Value: 1}}, Options: options.Index().SetName("userId_chatId")},
			{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "joinedAt", Value: 1}}, Options: options.Index().SetName("chatId_joinedAt")},
		}},
	} {
		if err := mongoindex.Ensure(ctx, x.c, x.models); err != nil {
			return fmt.Errorf("create indexes on %s: %w", x.c.Name(), err)
		}
	}
	return nil
}

// locked runs fn holding the lock named key (see doclock).
func (s *store) locked(ctx context.Context, key string, fn func() error) error {
	return s.locks.Do(ctx, key, fn)
}

func chatLock(id bson.ObjectID) string { return "chat:" + id.Hex() }

// now returns the store's time at the precision MongoDB keeps.
func (s *store) nowMs() time.Time {
	return s.now().UTC().Truncate(time.Millisecond)
}

var errNoChat = errors.New("no such chat")

func (s *store) getChat(ctx context.Context, id bson.ObjectID) (*chatDoc, error) {
	var c chatDoc
	err := s.chats.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoChat
	}
	if err != nil {
		return nil, fmt.Errorf("get chat: %w", err)
	}
	return &c, nil
}

// member returns the user's membership of the chat, or errNoChat.
func (s *store) member(ctx context.Context, chatID bson.ObjectID, userID int) (*memberDoc, error) {
	var m memberDoc
	err := s.members.FindOne(ctx, bson.D{{Key: "_id", Value: memberID(chatID, userID)}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoChat
	}
	if err != nil {
		return nil, fmt.Errorf("get member: %w", err)
	}
	ms := []memberDoc{m}
	if err := s.fillPositions(ctx, chatID, ms); err != nil {
		return nil, err
	}
	return &ms[0], nil
}

// fillPositions sets the members' read and delivered positions.
func (s *store) fillPositions(ctx context.Context, chatID bson.ObjectID, ms []memberDoc) error {
	filter := bson.D{{Key: "chatId", Value: chatID}}
	if len(ms) == 1 {
		filter = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{
			positionID(chatID, ms[0].UserID, kindRead), positionID(chatID, ms[0].UserID, kindDelivered),
		}}}}}
	}
	cur, err := s.positions.Find(ctx, filter)
	if err != nil {
		return fmt.Errorf("get positions: %w", err)
	}
	var ps []positionDoc
	if err := cur.All(ctx, &ps); err != nil {
		return fmt.Errorf("get positions: %w", err)
	}
	byID := make(map[string]int64, len(ps))
	for _, p := range ps {
		byID[p.ID] = p.Seq
	}
	for i := range ms {
		ms[i].ReadSeq = byID[positionID(chatID, ms[i].UserID, kindRead)]
		ms[i].DeliveredSeq = byID[positionID(chatID, ms[i].UserID, kindDelivered)]
	}
	return nil
}

func (s *store) chatMembers(ctx context.Context, chatID bson.ObjectID) ([]memberDoc, error) {
	cur, err := s.members.Find(ctx, bson.D{{Key: "chatId", Value: chatID}},
		options.Find().SetSort(bson.D{{Key: "joinedAt", Value: 1}, {Key: "userId", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	var out []memberDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	if err := s.fillPositions(ctx, chatID, out); err != nil {
		return nil, err
	}
	return out, nil
}

// addMembers inserts memberships; ones that exist already are kept as
// they are.
// A new member's read and delivered positions start at the chat's last
// seq, so history does not count as unread, nor hold back the status of
// earlier messages.
func (s *store) addMembers(ctx context.Context, chatID bson.ObjectID, userIDs []int, role string, lastSeq int64) error {
	if len(userIDs) == 0 {
		return nil
	}
	now := s.nowMs()
	docs := make([]any, len(userIDs))
	var positions []any
	for i, uid := range userIDs {
		docs[i] = memberDoc{ID: memberID(chatID, uid), ChatID: chatID, UserID: uid, Role: role, JoinedAt: now}
		for _, kind := range []string{kindRead, kindDelivered} {
			positions = append(positions, positionDoc{
				ID: positionID(chatID, uid, kind), ChatID: chatID, UserID: uid, Kind: kind, Seq: lastSeq,
			})
		}
	}
	// Positions first: a member is visible only once it can be read.
	if _, err := s.positions.InsertMany(ctx, positions, options.InsertMany().SetOrdered(false)); err != nil && !onlyDuplicates(err) {
		return fmt.Errorf("add members: %w", err)
	}
	if lastSeq > 0 {
		// Someone who left and comes back keeps older positions; move
		// them up to now.
		for _, uid := range userIDs {
			for _, kind := range []string{kindRead, kindDelivered} {
				if err := s.raisePosition(ctx, chatID, uid, kind, lastSeq); err != nil {
					return err
				}
			}
		}
	}
	_, err := s.members.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err != nil && !onlyDuplicates(err) {
		return fmt.Errorf("add members: %w", err)
	}
	return nil
}

// onlyDuplicates reports whether every write error of err is a duplicate
// key.
func onlyDuplicates(err error) bool {
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) {
		if bwe.WriteConcernError != nil {
			return false
		}
		for _, we := range bwe.WriteErrors {
			if we.Code != 11000 {
				return false
			}
		}
		return len(bwe.WriteErrors) > 0
	}
	return mongo.IsDuplicateKeyError(err)
}

// syncParticipants copies the chat's memberships into its participants
// array and bumps updatedAt. Memberships change by single-document writes
// that may race; re-reading until the copy matches makes the array
// converge to the members collection.
func (s *store) syncParticipants(ctx context.Context, chatID bson.ObjectID) ([]memberDoc, error) {
	members, err := s.chatMembers(ctx, chatID)
	if err != nil {
		return nil, err
	}
	for range 5 {
		parts := make([]participantDoc, len(members))
		for i, m := range members {
			parts[i] = participantDoc{UserID: m.UserID, Role: m.Role}
		}
		if err := s.locked(ctx, chatLock(chatID), func() error {
			_, err := s.chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}}, bson.D{{Key: "$set", Value: bson.D{
				{Key: "participants", Value: parts},
				{Key: "updatedAt", Value: s.nowMs()},
			}}})
			return err
		}); err != nil {
			return nil, fmt.Errorf("update participants: %w", err)
		}
		again, err := s.chatMembers(ctx, chatID)
		if err != nil {
			return nil, err
		}
		c, err := s.getChat(ctx, chatID)
		if err != nil {
			return nil, err
		}
		// Done when the members did not change meanwhile and the copy
		// stuck (on FerretDB another write to the chat can undo it).
		if slices.Equal(again, members) && slices.Equal(c.Participants, parts) {
			return members, nil
		}
		members = again
	}
	return members, nil
}

// createPrivate returns the private chat of a and b, creating it if needed.
// The unique pairKey makes racing creators agree on one chat.
func (s *store) createPrivate(ctx context.Context, a, b int) (*chatDoc, bool, error) {
	key := privateKey(a, b)
	now := s.nowMs()
	c := &chatDoc{
		ID:   bson.NewObjectID(),
		Type: typePrivate,
		Participants: []participantDoc{
			{UserID: min(a, b), Role: roleMember}, {UserID: max(a, b), Role: roleMember},
		},
		CreatedAt: now,
		UpdatedAt: now,
		PairKey:   key,
	}
	created := true
	if _, err := s.chats.InsertOne(ctx, c); err != nil {
		if !mongo.IsDuplicateKeyError(err) {
			return nil, false, fmt.Errorf("create private chat: %w", err)
		}
		created = false
		var existing chatDoc
		if err := s.chats.FindOne(ctx, bson.D{{Key: "pairKey", Value: key}}).Decode(&existing); err != nil {
			return nil, false, fmt.Errorf("find private chat: %w", err)
		}
		c = &existing
	}
	// Also when the chat existed: a creator that stopped between the two
	// inserts left it without members.
	if err := s.addMembers(ctx, c.ID, []int{a, b}, roleMember, 0); err != nil {
		return nil, false, err
	}
	return c, created, nil
}

func (s *store) createGroup(ctx context.Context, creator int, name string, others []int) (*chatDoc, error) {
	now := s.nowMs()
	id := bson.NewObjectID()
	parts := []participantDoc{{UserID: creator, Role: roleAdmin}}
	for _, uid := range others {
		parts = append(parts, participantDoc{UserID: uid, Role: roleMember})
	}
	c := &chatDoc{
		ID: id, Name: name, Type: typeGroup, Participants: parts,
		CreatedAt: now, UpdatedAt: now, PairKey: "g:" + id.Hex(),
	}
	if _, err := s.chats.InsertOne(ctx, c); err != nil {
		return nil, fmt.Errorf("create group: %w", err)
	}
	if err := s.addMembers(ctx, id, []int{creator}, roleAdmin, 0); err != nil {
		return nil, err
	}
	if err := s.addMembers(ctx, id, others, roleMember, 0); err != nil {
		return nil, err
	}
	return c, nil
}

// rename sets the group's name. The name carries the time it was set, so
// that the latest rename wins and a concurrent write to the chat document
// (which FerretDB may let undo this one) is repaired by writing again.
func (s *store) rename(ctx context.Context, chatID bson.ObjectID, name string) error {
	return s.locked(ctx, chatLock(chatID), func() error {
		now := s.nowMs()
		_, err := raise(ctx, s.chats, chatID, "chatNameSetAt", now.UnixNano(), bson.D{
			{Key: "chatName", Value: name},
			{Key: "updatedAt", Value: now},
		})
		return err
	})
}

func (s *store) removeMember(ctx context.Context, chatID bson.ObjectID, userID int) (bool, error) {
	res, err := s.members.DeleteOne(ctx, bson.D{{Key: "_id", Value: memberID(chatID, userID)}})
	if err != nil {
		return false, fmt.Errorf("remove member: %w", err)
	}
	return res.DeletedCount == 1, nil
}

func (s *store) setRole(ctx context.Context, chatID bson.ObjectID, userID int, role string) error {
	id := memberID(chatID, userID)
	return s.locked(ctx, "member:"+id, func() error {
		_, err := s.members.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "role", Value: role}}}})
		if err != nil {
			return fmt.Errorf("set role: %w", err)
		}
		return nil
	})
}

// chatPage is the position after the last chat of a ListChats page.
type chatPage struct {
	UpdatedAt time.Time
	ID        bson.ObjectID
}

// listChats returns up to limit of the user's chats, most recently
// updated first, after the cursor, with the user's memberships.
func (s *store) listChats(ctx context.Context, userID int, after *chatPage, limit int) ([]chatDoc, map[bson.ObjectID]memberDoc, error) {
	cur, err := s.members.Find(ctx, bson.D{{Key: "userId", Value: userID}})
	if err != nil {
		return nil, nil, fmt.Errorf("list memberships: %w", err)
	}
	var ms []memberDoc
	if err := cur.All(ctx, &ms); err != nil {
		return nil, nil, fmt.Errorf("list memberships: %w", err)
	}
	if len(ms) == 0 {
		return nil, nil, nil
	}
	cur, err = s.positions.Find(ctx, bson.D{{Key: "userId", Value: userID}, {Key: "kind", Value: kindRead}})
	if err != nil {
		return nil, nil, fmt.Errorf("list positions: %w", err)
	}
	var ps []positionDoc
	if err := cur.All(ctx, &ps); err != nil {
		return nil, nil, fmt.Errorf("list positions: %w", err)
	}
	read := make(map[bson.ObjectID]int64, len(ps))
	for _, p := range ps {
		read[p.ChatID] = p.Seq
	}
	byChat := make(map[bson.ObjectID]memberDoc, len(ms))
	ids := make([]bson.ObjectID, len(ms))
	for i, m := range ms {
		m.ReadSeq = read[m.ChatID]
		byChat[m.ChatID] = m
		ids[i] = m.ChatID
	}
	filter := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
	if after != nil {
		filter = append(filter, bson.E{Key: "$or", Value: bson.A{
			bson.D{{Key: "updatedAt", Value: bson.D{{Key: "$lt", Value: after.UpdatedAt}}}},
			bson.D{{Key: "updatedAt", Value: after.UpdatedAt}, {Key: "_id", Value: bson.D{{Key: "$lt", Value: after.ID}}}},
		}})
	}
	cur, err = s.chats.Find(ctx, filter, options.Find().
		SetSort(bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}).
		SetLimit(int64(limit)))
	if err != nil {
		return nil, nil, fmt.Errorf("list chats: %w", err)
	}
	var chats []chatDoc
	if err := cur.All(ctx, &chats); err != nil {
		return nil, nil, fmt.Errorf("list chats: %w", err)
	}
	return chats, byChat, nil
}

// unreadMany counts, in one aggregation, the unread messages of each chat
// for the given memberships (see unread).
func (s *store) unreadMany(ctx context.Context, chats []chatDoc, members map[bson.ObjectID]memberDoc) (map[bson.ObjectID]int64, error) {
	var branches bson.A
	for i := range chats {
		c, m := &chats[i], members[chats[i].ID]
		if c.LastMessage == nil || c.LastMessage.Seq <= m.ReadSeq {
			continue
		}
		branches = append(branches, bson.D{
			{Key: "chatId", Value: c.ID},
			{Key: "seq", Value: bson.D{{Key: "$gt", Value: m.ReadSeq}}},
			{Key: "senderId", Value: bson.D{{Key: "$ne", Value: m.UserID}}},
		})
	}
	out := make(map[bson.ObjectID]int64)
	if len(branches) == 0 {
		return out, nil
	}
	cur, err := s.messages.Aggregate(ctx, mongo.Pipeline{
		{{Key: "$match", Value: bson.D{
			{Key: "$or", Value: branches},
			{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
		}}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$chatId"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
	})
	if err != nil {
		return nil, fmt.Errorf("count unread: %w", err)
	}
	var rows []struct {
		ChatID bson.ObjectID `bson:"_id"`
		N      int64         `bson:"n"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return nil, fmt.Errorf("count unread: %w", err)
	}
	for _, r := range rows {
		out[r.ChatID] = r.N
	}
	return out, nil
}

// unread counts the messages after the member's read position that others
// sent, skipping deleted ones.
func (s *store) unread(ctx context.Context, c *chatDoc, m memberDoc) (int64, error) {
	if c.LastMessage == nil || c.LastMessage.Seq <= m.ReadSeq {
		return 0, nil
	}
	n, err := s.messages.CountDocuments(ctx, bson.D{
		{Key: "chatId", Value: c.ID},
		{Key: "seq", Value: bson.D{{Key: "$gt", Value: m.ReadSeq}}},
		{Key: "senderId", Value: bson.D{{Key: "$ne", Value: m.UserID}}},
		{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
	})
	if err != nil {
		return 0, fmt.Errorf("count unread: %w", err)
	}
	return n, nil
}
