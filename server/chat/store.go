package chat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
)

// Chat types and roles as the documents spell them (the customer's model).
const (
	typePrivate = "private"
	typeGroup   = "group"
	roleAdmin   = "admin"
	roleMember  = "member"
)

// chatDoc is a document of the chats collection, in the customer's shape.
// Its participants array is the authority on who is in the chat and with
// which role; every change of it is one conditional update that expects
// the membersVersion it read (compare and swap), so that checks such as
// "a group keeps an admin" and "at most MaxGroupSize members" hold however
// many requests change a group at once.
//
// pairKey is Parley's: "p:<low id>:<high id>" for a private chat, so that a
// unique index allows one per pair, and "g:<chat id>" for a group, or
// "g:<creator id>:<request id>" for one created with a request id, so
// that the index allows one per request (see CreateGroupChatRequest).
type chatDoc struct {
	ID             bson.ObjectID    `bson:"_id"`
	Name           string           `bson:"chatName,omitempty"`
	Description    string           `bson:"description,omitempty"`
	AvatarURL      string           `bson:"avatarUrl,omitempty"`
	Type           string           `bson:"chatType"`
	LastMessage    *lastMessageDoc  `bson:"lastMessage,omitempty"`
	Participants   []participantDoc `bson:"participants"`
	MembersVersion int64            `bson:"membersVersion"`
	CreatedAt      time.Time        `bson:"createdAt"`
	UpdatedAt      time.Time        `bson:"updatedAt"`
	PairKey        string           `bson:"pairKey"`
	// Request is set while a private chat is a request of its starter
	// (see parleyv1.Chat.request); chats from before requests have none
	// and count as accepted.
	Request *requestDoc `bson:"request,omitempty"`
	// HiddenFor lists the member who declined the request: to it the
	// chat does not exist until it accepts it after all.
	HiddenFor []int `bson:"hiddenFor,omitempty"`
	// AcceptedBy is the member that accepted the request, until the
	// acceptance is announced (see Service.accept): the next send or
	// accept announces it, should the accepting call have failed to.
	AcceptedBy int `bson:"acceptedBy,omitempty"`
	// SentSeq holds, by member (its user id in decimal), the largest seq
	// it sent: its read and delivered positions are at least that (see
	// fillPositions). A send raises it in the update that moves
	// lastMessage, one command instead of two; a member that leaves is
	// taken out. Chats from before it, and the embedded store, have none.
	SentSeq map[string]int64 `bson:"sentSeq,omitempty"`
	// Pins are the chat's pinned messages, in the order they were
	// pinned (see pinDoc).
	Pins []pinDoc `bson:"pins,omitempty"`
	// PinsVer counts the changes of Pins: each pin and unpin raises it in
	// its update, and its event carries the value (PinsChanged.version),
	// so that clients order the events of changes made at once.
	PinsVer int64 `bson:"pinsVer,omitempty"`
	// Left lists the members who left (or were removed) in the last
	// departureMemory and whose departure may not have been announced,
	// for a retry of the call that took them out (see memberChangeDoc).
	Left []memberChangeDoc `bson:"left,omitempty"`
	// Arrived lists, likewise, the members who joined (or were added)
	// and whose arrival may not have been announced.
	Arrived []memberChangeDoc `bson:"arrived,omitempty"`
}

// memberChangeDoc is a member's arrival in a chat, or departure from it,
// whose announcement may have failed: it joined or left by itself when
// By is the member, or By (an admin) added or removed it. Once
// announced, it is forgotten (forgetChanges): a retry of the call that
// made the change announces it once more, and only such a retry (not
// another call that finds the member in, or out, already).
type memberChangeDoc struct {
	UserID int       `bson:"userId"`
	By     int       `bson:"by"`
	At     time.Time `bson:"at"`
}

// departureMemory is how long a chat remembers who left it (and who
// came), and maxDepartures how many left at most (arrivals: its members,
// MaxGroupSize at most).
const (
	departureMemory = 10 * time.Minute
	maxDepartures   = 100
)

// departedSince reports whether by took the user out of the chat (by
// itself: the user left) after t, and the user was not back since.
func (c *chatDoc) departedSince(userID, by int, t time.Time) bool {
	return c.participant(userID) == nil && slices.ContainsFunc(c.Left, func(d memberChangeDoc) bool {
		return d.UserID == userID && d.By == by && d.At.After(t)
	})
}

// arrivedSince reports whether by made the user a member of the chat (by
// itself: the user joined) after t, with the arrival not yet announced.
func (c *chatDoc) arrivedSince(userID, by int, t time.Time) bool {
	return c.participant(userID) != nil && slices.ContainsFunc(c.Arrived, func(d memberChangeDoc) bool {
		return d.UserID == userID && d.By == by && d.At.After(t)
	})
}

// sentBy returns the largest seq the user sent in the chat, as SentSeq
// holds it (0: none).
func (c *chatDoc) sentBy(userID int) int64 {
	return c.SentSeq[strconv.Itoa(userID)]
}

// requestDoc is the request state of a private chat.
type requestDoc struct {
	StarterID int `bson:"starterId"`
}

// answeredBy reports whether a send by sender answers the private chat's
// request (sender is its recipient), or announces an acceptance whose
// announcement failed: either way, the send accepts it.
func (c *chatDoc) answeredBy(sender int) bool {
	return c.Request != nil && c.Request.StarterID != sender || c.AcceptedBy != 0
}

// declined reports whether the chat is a request its recipient declined.
func (c *chatDoc) declined() bool {
	return c.Request != nil && len(c.HiddenFor) > 0
}

// peer returns the other member of a private chat (0 when none).
func (c *chatDoc) peer(userID int) int {
	for _, p := range c.Participants {
		if p.UserID != userID {
			return p.UserID
		}
	}
	return 0
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

// participant returns the user's entry in the chat, or nil.
func (c *chatDoc) participant(userID int) *participantDoc {
	i := slices.IndexFunc(c.Participants, func(p participantDoc) bool { return p.UserID == userID })
	if i < 0 {
		return nil
	}
	return &c.Participants[i]
}

// member is one member of a chat: its participant entry with its read and
// delivered positions.
type member struct {
	ChatID       bson.ObjectID
	UserID       int
	Role         string
	ReadSeq      int64
	DeliveredSeq int64
}

// Kinds of position.
const (
	kindRead      = "read"
	kindDelivered = "delivered"
)

// positionDoc is a document of the positions collection: how far one
// member has read, or received, one chat. Its only changing field is seq,
// which only grows (see raise). Positions live apart from the chat so
// that members marking what they read never contend with each other or
// with sends on the chat document.
type positionDoc struct {
	ID     string        `bson:"_id"`
	ChatID bson.ObjectID `bson:"chatId"`
	UserID int           `bson:"userId"`
	Kind   string        `bson:"kind"`
	Seq    int64         `bson:"seq"`
}

func positionID(chatID bson.ObjectID, userID int, kind string) string {
	return chatID.Hex() + ":" + strconv.Itoa(userID) + ":" + kind
}

func privateKey(a, b int) string {
	lo, hi := min(a, b), max(a, b)
	return fmt.Sprintf("p:%d:%d", lo, hi)
}

// store keeps chats, positions and messages in MongoDB. Every write is a
// single insert or one atomic single-document update (conditional $set,
// $max, compare and swap on membersVersion), correct on MongoDB and
// FerretDB 2 as it is. On FerretDB 1.x, which loses concurrent updates of
// one document, locks (see doclock) serialize the updates of each
// document; on the other engines locks is nil and nothing waits.
type store struct {
	locks       *doclock.Locks
	rdb         redis.UniversalClient
	redisPrefix string

	chats        *mongo.Collection
	positions    *mongo.Collection
	messages     *mongo.Collection
	chatSettings *mongo.Collection
	hidden       *mongo.Collection
	invites      *mongo.Collection
	reactions    *mongo.Collection
	// empties records the chats that may have no reader left (see
	// Service.Purge).
	empties *mongo.Collection
	now     func() time.Time

	// inserts and sentUpdates combine the writes of concurrent sends
	// (see combiner): their messages, and their chats' updates.
	inserts     *combiner[*messageDoc]
	sentUpdates *combiner[*messageDoc]
}

// maxCombined bounds the sends that share one insert or update command.
const maxCombined = 64

func newStore(db *mongo.Database, rdb redis.UniversalClient, locks *doclock.Locks, redisPrefix string, now func() time.Time) *store {
	s := &store{
		locks:       locks,
		rdb:         rdb,
		redisPrefix: redisPrefix,
		chats:       db.Collection("chats"),
		positions:   db.Collection("positions"),
		messages:    db.Collection("messages"),
		reactions:   db.Collection("reactions"),
		now:         now,

		chatSettings: db.Collection("chatSettings"),
		hidden:       db.Collection("hiddenMessages"),
		invites:      db.Collection("invites"),
		empties:      db.Collection("emptyChats"),
	}
	s.inserts = &combiner[*messageDoc]{write: s.insertMessages, max: maxCombined}
	s.sentUpdates = &combiner[*messageDoc]{write: s.sentMany, max: maxCombined}
	return s
}

// locked runs fn holding the lock named key where the engine needs it.
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

// sentSeq reads the chat's SentSeq alone.
func (s *store) sentSeq(ctx context.Context, chatID bson.ObjectID) (map[string]int64, error) {
	var c chatDoc
	err := s.chats.FindOne(ctx, bson.D{{Key: "_id", Value: chatID}},
		options.FindOne().SetProjection(bson.D{{Key: "sentSeq", Value: 1}})).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoChat
	}
	if err != nil {
		return nil, fmt.Errorf("sent seqs: %w", err)
	}
	return c.SentSeq, nil
}

// member returns the user's membership of the chat with its positions, or
// errNoChat.
func (s *store) member(ctx context.Context, c *chatDoc, userID int) (*member, error) {
	m, err := memberOf(c, userID)
	if err != nil {
		return nil, err
	}
	ms := []member{*m}
	if err := s.fillPositions(ctx, c, ms); err != nil {
		return nil, err
	}
	return &ms[0], nil
}

// memberOf returns the user's membership of the chat without its
// positions (0), or errNoChat.
func memberOf(c *chatDoc, userID int) (*member, error) {
	p := c.participant(userID)
	if p == nil || slices.Contains(c.HiddenFor, userID) {
		return nil, errNoChat
	}
	return &member{ChatID: c.ID, UserID: userID, Role: p.Role}, nil
}

// fillPositions sets the members' read and delivered positions: those of
// the positions collection (a missing one is 0), raised to what each
// sent, as the chat holds it (SentSeq).
func (s *store) fillPositions(ctx context.Context, c *chatDoc, ms []member) error {
	chatID := c.ID
	filter := bson.D{{Key: "chatId", Value: chatID}}
	if len(ms) <= 4 {
		ids := make(bson.A, 0, 2*len(ms))
		for _, m := range ms {
			ids = append(ids, positionID(chatID, m.UserID, kindRead), positionID(chatID, m.UserID, kindDelivered))
		}
		filter = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
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
		sent := c.sentBy(ms[i].UserID)
		ms[i].ReadSeq = max(byID[positionID(chatID, ms[i].UserID, kindRead)], sent)
		ms[i].DeliveredSeq = max(byID[positionID(chatID, ms[i].UserID, kindDelivered)], sent)
	}
	return nil
}

// chatMembers returns the chat's members, in the order they joined, with
// their positions.
func (s *store) chatMembers(ctx context.Context, c *chatDoc) ([]member, error) {
	out := make([]member, len(c.Participants))
	for i, p := range c.Participants {
		out[i] = member{ChatID: c.ID, UserID: p.UserID, Role: p.Role}
	}
	if err := s.fillPositions(ctx, c, out); err != nil {
		return nil, err
	}
	return out, nil
}

// errNoChange tells changeMembers that the change is already made.
var errNoChange = errors.New("no change")

// Fields of the chat document that list member changes (see
// memberChangeDoc).
const (
	departures = "left"
	arrivals   = "arrived"
)

// forgetChanges forgets the departures or arrivals (field) of the users
// by actor made up to upTo, announced. It raises membersVersion, so that
// a change of the members that read the chat before writes nothing
// (changeMembers writes the lists whole) and reads it again.
func (s *store) forgetChanges(ctx context.Context, chatID bson.ObjectID, field string, userIDs []int, actor int, upTo time.Time) error {
	if len(userIDs) == 0 {
		return nil
	}
	err := s.locked(ctx, chatLock(chatID), func() error {
		if s.locks.Serial() {
			// FerretDB 1.x: read and written under the lock.
			c, err := s.getChat(ctx, chatID)
			if err != nil {
				return err
			}
			was := c.Left
			if field == arrivals {
				was = c.Arrived
			}
			kept := slices.DeleteFunc(slices.Clone(was), func(d memberChangeDoc) bool {
				return d.By == actor && slices.Contains(userIDs, d.UserID) && !d.At.After(upTo)
			})
			if len(kept) == len(was) {
				return nil
			}
			_, err = s.chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}}, bson.D{
				{Key: "$set", Value: bson.D{{Key: field, Value: kept}}},
				{Key: "$inc", Value: bson.D{{Key: "membersVersion", Value: 1}}},
			})
			return err
		}
		match := bson.D{{Key: "userId", Value: bson.D{{Key: "$in", Value: userIDs}}}, {Key: "by", Value: actor}, {Key: "at", Value: bson.D{{Key: "$lte", Value: upTo}}}}
		_, err := s.chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}, {Key: field, Value: bson.D{{Key: "$elemMatch", Value: match}}}}, bson.D{
			{Key: "$pull", Value: bson.D{{Key: field, Value: match}}},
			{Key: "$inc", Value: bson.D{{Key: "membersVersion", Value: 1}}},
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("forget %s: %w", field, err)
	}
	return nil
}

// changeMembers replaces the chat's participants with what change makes of
// the chat as last read, if no other change came in between; otherwise it
// reads the chat again and asks change again. The members it takes out
// are recorded as departures by actor, those it brings in as arrivals.
// change sees the current participants, so the checks it makes (the
// caller is an admin, the group stays within its size and keeps an
// admin) hold for what is written. It returns the chat as written, or change's error
// (errNoChange: the chat as read).
func (s *store) changeMembers(ctx context.Context, chatID bson.ObjectID, actor int, change func(c *chatDoc) ([]participantDoc, error)) (*chatDoc, error) {
	for attempt := 0; ; attempt++ {
		c, err := s.getChat(ctx, chatID)
		if err != nil {
			return nil, err
		}
		parts, err := change(c)
		if errors.Is(err, errNoChange) {
			return c, nil
		}
		if err != nil {
			return nil, err
		}
		if c.Type == typeGroup && len(parts) == 0 {
			// Before the change, which may land even if this fails.
			if err := s.markEmpty(ctx, chatID); err != nil {
				return nil, err
			}
		}
		now := s.nowMs()
		update := bson.D{
			{Key: "$set", Value: bson.D{{Key: "participants", Value: parts}}},
			{Key: "$inc", Value: bson.D{{Key: "membersVersion", Value: 1}}},
			{Key: "$max", Value: bson.D{{Key: "updatedAt", Value: now}}},
		}
		// Those who leave take their sent seq along: SentSeq holds
		// members only. Departures and arrivals are remembered a while:
		// an arrival until its member leaves, a departure until its
		// member is back.
		in := func(ps []participantDoc, uid int) bool {
			return slices.ContainsFunc(ps, func(q participantDoc) bool { return q.UserID == uid })
		}
		var gone bson.D
		// What is kept of a list: the changes of the last
		// departureMemory, of members still out (member false) or in.
		kept := func(changes []memberChangeDoc, member bool) []memberChangeDoc {
			return slices.DeleteFunc(slices.Clone(changes), func(d memberChangeDoc) bool {
				return !d.At.After(now.Add(-departureMemory)) || in(parts, d.UserID) != member
			})
		}
		left, arrived := kept(c.Left, false), kept(c.Arrived, true)
		for _, p := range c.Participants {
			if !in(parts, p.UserID) {
				gone = append(gone, bson.E{Key: "sentSeq." + strconv.Itoa(p.UserID), Value: ""})
				left = append(left, memberChangeDoc{UserID: p.UserID, By: actor, At: now})
			}
		}
		for _, p := range parts {
			if !in(c.Participants, p.UserID) {
				arrived = append(arrived, memberChangeDoc{UserID: p.UserID, By: actor, At: now})
			}
		}
		if len(gone) > 0 {
			update = append(update, bson.E{Key: "$unset", Value: gone})
		}
		left = left[max(0, len(left)-maxDepartures):]
		arrived = arrived[max(0, len(arrived)-MaxGroupSize):]
		if !slices.Equal(left, c.Left) {
			update[0].Value = append(update[0].Value.(bson.D), bson.E{Key: departures, Value: left})
		}
		if !slices.Equal(arrived, c.Arrived) {
			update[0].Value = append(update[0].Value.(bson.D), bson.E{Key: arrivals, Value: arrived})
		}
		var res *mongo.UpdateResult
		err = s.changing(ctx, chatID, func(ctx context.Context) error {
			return s.locked(ctx, chatLock(chatID), func() (err error) {
				res, err = s.chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}, versionIs(c.MembersVersion)}, update)
				return err
			})
		})
		if err != nil {
			return nil, fmt.Errorf("change members: %w", err)
		}
		if res.MatchedCount == 1 {
			c.Participants, c.MembersVersion, c.Left, c.Arrived = parts, c.MembersVersion+1, left, arrived
			if now.After(c.UpdatedAt) {
				c.UpdatedAt = now
			}
			return c, nil
		}
		// Another change won; back off a little so that a crowd of
		// writers does not retry in lockstep.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("change members: %w", ctx.Err())
		case <-time.After(time.Duration(rand.Int64N(int64(min(attempt+1, 20)) * int64(time.Millisecond)))):
		}
	}
}

// versionIs matches a chat whose membersVersion is v (0: none stored,
// which only chats from before Parley kept one have until start-up
// upgrades them; see Prepare).
func versionIs(v int64) bson.E {
	if v == 0 {
		return bson.E{Key: "membersVersion", Value: bson.D{{Key: "$exists", Value: false}}}
	}
	return bson.E{Key: "membersVersion", Value: v}
}

// startPositions moves the read and delivered positions of users about to
// join a chat up to seq, so that history does not count as unread, nor
// hold back the status of earlier messages. Someone who left and comes
// back keeps later positions.
func (s *store) startPositions(ctx context.Context, chatID bson.ObjectID, userIDs []int, seq int64) error {
	if seq == 0 {
		return nil
	}
	kinds := []string{kindRead, kindDelivered}
	if !s.locks.Serial() && len(userIDs) > 0 {
		// One command for them all (a group may take hundreds at once):
		// each position raised by $max, or created.
		models := make([]mongo.WriteModel, 0, len(kinds)*len(userIDs))
		for _, uid := range userIDs {
			for _, kind := range kinds {
				models = append(models, mongo.NewUpdateOneModel().
					SetFilter(bson.D{{Key: "_id", Value: positionID(chatID, uid, kind)}}).
					SetUpdate(bson.D{
						{Key: "$max", Value: bson.D{{Key: "seq", Value: seq}}},
						{Key: "$setOnInsert", Value: bson.D{{Key: "chatId", Value: chatID}, {Key: "userId", Value: uid}, {Key: "kind", Value: kind}}},
					}).SetUpsert(true))
			}
		}
		_, err := s.positions.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		if err == nil {
			return nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("start positions: %w", err)
		}
		// Two upserts of one position at once (another request created
		// it meanwhile): one at a time, as on the engines that lock.
	}
	for _, uid := range userIDs {
		for _, kind := range kinds {
			if err := s.raisePosition(ctx, chatID, uid, kind, seq); err != nil {
				return err
			}
		}
	}
	return nil
}

// findPrivate returns the private chat of a and b, or errNoChat.
func (s *store) findPrivate(ctx context.Context, a, b int) (*chatDoc, error) {
	var c chatDoc
	err := s.chats.FindOne(ctx, bson.D{{Key: "pairKey", Value: privateKey(a, b)}}).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoChat
	}
	if err != nil {
		return nil, fmt.Errorf("find private chat: %w", err)
	}
	return &c, nil
}

// createPrivate returns the private chat of a and b, creating it if
// needed, as a request of a. The unique pairKey makes racing creators
// agree on one chat.
func (s *store) createPrivate(ctx context.Context, a, b int) (*chatDoc, bool, error) {
	key := privateKey(a, b)
	now := s.nowMs()
	c := &chatDoc{
		ID:      bson.NewObjectID(),
		Type:    typePrivate,
		Request: &requestDoc{StarterID: a},
		Participants: []participantDoc{
			{UserID: min(a, b), Role: roleMember}, {UserID: max(a, b), Role: roleMember},
		},
		MembersVersion: 1,
		CreatedAt:      now,
		UpdatedAt:      now,
		PairKey:        key,
	}
	return s.insertChat(ctx, c)
}

// insertChat stores a new chat, unless one with its pairKey exists: it
// returns that one then, and reports whether it stored c.
func (s *store) insertChat(ctx context.Context, c *chatDoc) (*chatDoc, bool, error) {
	_, err := s.chats.InsertOne(ctx, c)
	if err == nil {
		return c, true, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return nil, false, fmt.Errorf("create chat: %w", err)
	}
	var existing chatDoc
	if err := s.chats.FindOne(ctx, bson.D{{Key: "pairKey", Value: c.PairKey}}).Decode(&existing); err != nil {
		return nil, false, fmt.Errorf("find chat %s: %w", c.PairKey, err)
	}
	return &existing, false, nil
}

// createGroup creates a group of the creator, its admin, and others. With
// a request id ("": none), it returns the group the creator made with
// the same id instead, if there is one, and reports whether it created
// the group.
func (s *store) createGroup(ctx context.Context, creator int, name string, others []int, requestID string) (*chatDoc, bool, error) {
	now := s.nowMs()
	id := bson.NewObjectID()
	parts := []participantDoc{{UserID: creator, Role: roleAdmin}}
	for _, uid := range others {
		parts = append(parts, participantDoc{UserID: uid, Role: roleMember})
	}
	key := "g:" + id.Hex()
	if requestID != "" {
		key = "g:" + strconv.Itoa(creator) + ":" + requestID
	}
	return s.insertChat(ctx, &chatDoc{
		ID: id, Name: name, Type: typeGroup, Participants: parts, MembersVersion: 1,
		CreatedAt: now, UpdatedAt: now, PairKey: key,
	})
}

// rename sets the group's name. The name carries the time it was set, so
// that the latest rename wins.
func (s *store) rename(ctx context.Context, chatID bson.ObjectID, name string) error {
	return s.setLatest(ctx, chatID, "chatName", name)
}

// describe sets the group's description, the latest winning as with
// rename.
func (s *store) describe(ctx context.Context, chatID bson.ObjectID, text string) error {
	return s.setLatest(ctx, chatID, "description", text)
}

// setLatest sets a field of the chat to v unless a later change set it
// already: the field carries the time it was set (in <field>SetAt), to
// the nanosecond, so that two changes within a millisecond are not a tie
// that the second loses.
func (s *store) setLatest(ctx context.Context, chatID bson.ObjectID, field, v string) error {
	return s.locked(ctx, chatLock(chatID), func() error {
		now := s.now()
		_, err := raise(ctx, s.chats, chatID, field+"SetAt", now.UnixNano(), bson.D{
			{Key: field, Value: v},
		}, bson.D{{Key: "updatedAt", Value: now.UTC().Truncate(time.Millisecond)}})
		return err
	})
}

// chatSet narrows a list of chats to some (in), or leaves some out
// (notIn).
type chatSet struct {
	in, notIn []bson.ObjectID
}

func (cs chatSet) filter() bson.D {
	switch {
	case cs.in != nil:
		return bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: cs.in}}}}
	case len(cs.notIn) > 0:
		return bson.D{{Key: "_id", Value: bson.D{{Key: "$nin", Value: cs.notIn}}}}
	}
	return nil
}

// listChatsQuery is the filter and options of a page of the user's chats
// of the set, most recently updated first, after the cursor.
func listChatsQuery(userID int, set chatSet, after *chatPage, limit int) (bson.D, *options.FindOptionsBuilder) {
	filter := append(bson.D{
		{Key: "participants.user_id", Value: userID},
		{Key: "hiddenFor", Value: bson.D{{Key: "$ne", Value: userID}}},
	}, set.filter()...)
	if after != nil {
		filter = append(filter,
			// The first condition alone lets the index bound the scan;
			// the $or breaks ties.
			bson.E{Key: "updatedAt", Value: bson.D{{Key: "$lte", Value: after.UpdatedAt}}},
			bson.E{Key: "$or", Value: bson.A{
				bson.D{{Key: "updatedAt", Value: bson.D{{Key: "$lt", Value: after.UpdatedAt}}}},
				bson.D{{Key: "_id", Value: bson.D{{Key: "$lt", Value: after.ID}}}},
			}})
	}
	return filter, options.Find().
		SetSort(bson.D{{Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}).
		SetLimit(int64(limit))
}

// chatPage is the position after the last chat of a ListChats page.
type chatPage struct {
	UpdatedAt time.Time
	ID        bson.ObjectID
}

// listChats returns up to limit of the user's chats of the set, most
// recently updated first, after the cursor.
func (s *store) listChats(ctx context.Context, userID int, set chatSet, after *chatPage, limit int) ([]chatDoc, error) {
	filter, opts := listChatsQuery(userID, set, after, limit)
	cur, err := s.chats.Find(ctx, filter, opts)
	if err != nil {
		return nil, fmt.Errorf("list chats: %w", err)
	}
	var chats []chatDoc
	if err := cur.All(ctx, &chats); err != nil {
		return nil, fmt.Errorf("list chats: %w", err)
	}
	return chats, nil
}

// chatsByID returns those of the chats with the ids that the user is in,
// in the order of ids.
func (s *store) chatsByID(ctx context.Context, userID int, ids []bson.ObjectID) ([]chatDoc, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	chats, err := s.listChats(ctx, userID, chatSet{in: ids}, nil, len(ids))
	if err != nil {
		return nil, err
	}
	slices.SortFunc(chats, func(a, b chatDoc) int { return slices.Index(ids, a.ID) - slices.Index(ids, b.ID) })
	return chats, nil
}

// memberships returns the user's memberships of the chats, with its read
// positions.
func (s *store) memberships(ctx context.Context, userID int, chats []chatDoc) (map[bson.ObjectID]member, error) {
	if len(chats) == 0 {
		return nil, nil
	}
	ids := make(bson.A, len(chats))
	for i, c := range chats {
		ids[i] = positionID(c.ID, userID, kindRead)
	}
	cur, err := s.positions.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, fmt.Errorf("list positions: %w", err)
	}
	var ps []positionDoc
	if err := cur.All(ctx, &ps); err != nil {
		return nil, fmt.Errorf("list positions: %w", err)
	}
	read := make(map[bson.ObjectID]int64, len(ps))
	for _, p := range ps {
		read[p.ChatID] = p.Seq
	}
	byChat := make(map[bson.ObjectID]member, len(chats))
	for _, c := range chats {
		m := member{ChatID: c.ID, UserID: userID, ReadSeq: max(read[c.ID], c.sentBy(userID))}
		if p := c.participant(userID); p != nil {
			m.Role = p.Role
		}
		byChat[c.ID] = m
	}
	return byChat, nil
}

// chatsOf returns the ids, types, request states and participants of
// every chat the user is in.
func (s *store) chatsOf(ctx context.Context, userID int) ([]chatDoc, error) {
	cur, err := s.chats.Find(ctx, bson.D{{Key: "participants.user_id", Value: userID}},
		options.Find().SetProjection(bson.D{
			{Key: "participants", Value: 1}, {Key: "chatType", Value: 1}, {Key: "request", Value: 1}, {Key: "hiddenFor", Value: 1},
		}))
	if err != nil {
		return nil, fmt.Errorf("chats of user: %w", err)
	}
	var out []chatDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("chats of user: %w", err)
	}
	return out, nil
}

// unreadCounts are a member's unread messages in a chat, and how many of
// them mention it.
type unreadCounts struct{ messages, mentions int64 }

// unreadMany counts the unread messages of each chat for the given
// memberships (see unread), in one aggregation, and those that mention
// the member in another, made only when some chat has unread messages.
func (s *store) unreadMany(ctx context.Context, chats []chatDoc, members map[bson.ObjectID]member) (map[bson.ObjectID]unreadCounts, error) {
	out := make(map[bson.ObjectID]unreadCounts)
	pipeline := unreadPipeline(chats, members, false)
	if pipeline == nil {
		return out, nil
	}
	counts := func(p mongo.Pipeline, set func(*unreadCounts, int64)) error {
		cur, err := s.messages.Aggregate(ctx, p)
		if err != nil {
			return err
		}
		var rows []struct {
			ChatID bson.ObjectID `bson:"_id"`
			N      int64         `bson:"n"`
		}
		if err := cur.All(ctx, &rows); err != nil {
			return err
		}
		for _, r := range rows {
			c := out[r.ChatID]
			set(&c, r.N)
			out[r.ChatID] = c
		}
		return nil
	}
	if err := counts(pipeline, func(c *unreadCounts, n int64) { c.messages = n }); err != nil {
		return nil, fmt.Errorf("count unread: %w", err)
	}
	if err := counts(unreadPipeline(chats, members, true), func(c *unreadCounts, n int64) { c.mentions = n }); err != nil {
		return nil, fmt.Errorf("count unread mentions: %w", err)
	}
	return out, nil
}

// unreadPipeline counts the unread messages of each chat for the given
// memberships (only those that mention the member, when mentions); nil
// when no chat can have any.
func unreadPipeline(chats []chatDoc, members map[bson.ObjectID]member, mentions bool) mongo.Pipeline {
	var branches bson.A
	userID := 0
	for i := range chats {
		c, m := &chats[i], members[chats[i].ID]
		if c.LastMessage == nil || c.LastMessage.Seq <= m.ReadSeq {
			continue
		}
		userID = m.UserID
		branches = append(branches, bson.D{
			{Key: "chatId", Value: c.ID},
			{Key: "seq", Value: bson.D{{Key: "$gt", Value: m.ReadSeq}}},
			{Key: "senderId", Value: bson.D{{Key: "$ne", Value: m.UserID}}},
		})
	}
	if len(branches) == 0 {
		return nil
	}
	match := bson.D{
		{Key: "$or", Value: branches},
		{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
	}
	if mentions {
		match = append(match, mentioning(userID))
	}
	return mongo.Pipeline{
		{{Key: "$match", Value: match}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$chatId"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
	}
}

// mentioning matches the messages that mention the user, by name or @all.
func mentioning(userID int) bson.E {
	return bson.E{Key: "mentions", Value: bson.D{{Key: "$in", Value: bson.A{userID, mentionAll}}}}
}

// unreadFilter matches the messages after the member's read position that
// others sent, skipping deleted ones.
func unreadFilter(chatID bson.ObjectID, m member) bson.D {
	return bson.D{
		{Key: "chatId", Value: chatID},
		{Key: "seq", Value: bson.D{{Key: "$gt", Value: m.ReadSeq}}},
		{Key: "senderId", Value: bson.D{{Key: "$ne", Value: m.UserID}}},
		{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
	}
}

// unread counts the member's unread messages (see unreadFilter).
func (s *store) unread(ctx context.Context, c *chatDoc, m member) (int64, error) {
	n, err := s.messages.CountDocuments(ctx, unreadFilter(c.ID, m))
	if err != nil {
		return 0, fmt.Errorf("count unread: %w", err)
	}
	return n, nil
}

// unreadBoth counts the member's unread messages, and those of them that
// mention it (not counted when nothing is unread).
func (s *store) unreadBoth(ctx context.Context, c *chatDoc, m member) (unreadCounts, error) {
	n, err := s.unread(ctx, c, m)
	if err != nil || n == 0 {
		return unreadCounts{messages: n}, err
	}
	k, err := s.messages.CountDocuments(ctx, append(unreadFilter(c.ID, m), mentioning(m.UserID)))
	if err != nil {
		return unreadCounts{}, fmt.Errorf("count unread mentions: %w", err)
	}
	return unreadCounts{messages: n, mentions: k}, nil
}

// acceptRequest makes the private chat an accepted one (no request, hidden
// for nobody), by userID, its acceptance not yet announced.
func (s *store) acceptRequest(ctx context.Context, chatID bson.ObjectID, userID int) error {
	err := s.changing(ctx, chatID, func(ctx context.Context) error {
		return s.locked(ctx, chatLock(chatID), func() error {
			_, err := s.chats.UpdateOne(ctx, bson.D{
				{Key: "_id", Value: chatID}, {Key: "request", Value: bson.D{{Key: "$exists", Value: true}}},
			}, bson.D{
				{Key: "$unset", Value: bson.D{{Key: "request", Value: ""}, {Key: "hiddenFor", Value: ""}}},
				{Key: "$set", Value: bson.D{{Key: "acceptedBy", Value: userID}}},
				{Key: "$max", Value: bson.D{{Key: "updatedAt", Value: s.nowMs()}}},
			})
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("accept request: %w", err)
	}
	return nil
}

// acceptAnnounced records that the chat's acceptance is announced.
func (s *store) acceptAnnounced(ctx context.Context, chatID bson.ObjectID) error {
	err := s.changing(ctx, chatID, func(ctx context.Context) error {
		return s.locked(ctx, chatLock(chatID), func() error {
			_, err := s.chats.UpdateOne(ctx, bson.D{
				{Key: "_id", Value: chatID}, {Key: "acceptedBy", Value: bson.D{{Key: "$exists", Value: true}}},
			}, bson.D{{Key: "$unset", Value: bson.D{{Key: "acceptedBy", Value: ""}}}})
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("record the acceptance announced: %w", err)
	}
	return nil
}

// declineRequest hides the chat, still a request that userID did not
// start, for userID.
func (s *store) declineRequest(ctx context.Context, chatID bson.ObjectID, userID int) error {
	return s.changing(ctx, chatID, func(ctx context.Context) error {
		return s.locked(ctx, chatLock(chatID), func() error {
			_, err := s.chats.UpdateOne(ctx, bson.D{
				{Key: "_id", Value: chatID},
				{Key: "request.starterId", Value: bson.D{{Key: "$exists", Value: true}, {Key: "$ne", Value: userID}}},
			}, bson.D{{Key: "$set", Value: bson.D{{Key: "hiddenFor", Value: bson.A{userID}}}}})
			if err != nil {
				return fmt.Errorf("decline request: %w", err)
			}
			return nil
		})
	})
}

// chattedWith returns those of users with whom the user shares a private
// chat that is no request: one indexed read of their pair keys.
func (s *store) chattedWith(ctx context.Context, userID int, users []int) (map[int]bool, error) {
	out := map[int]bool{}
	if len(users) == 0 {
		return out, nil
	}
	keys := make(bson.A, len(users))
	for i, u := range users {
		keys[i] = privateKey(userID, u)
	}
	cur, err := s.chats.Find(ctx, bson.D{
		{Key: "pairKey", Value: bson.D{{Key: "$in", Value: keys}}},
		{Key: "request", Value: bson.D{{Key: "$exists", Value: false}}},
	}, options.Find().SetProjection(bson.D{{Key: "participants", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("chatted with: %w", err)
	}
	var chats []chatDoc
	if err := cur.All(ctx, &chats); err != nil {
		return nil, fmt.Errorf("chatted with: %w", err)
	}
	for _, c := range chats {
		out[c.peer(userID)] = true
	}
	return out, nil
}

// shareGroup reports whether a and b are both in some group.
func (s *store) shareGroup(ctx context.Context, a, b int) (bool, error) {
	// Two equalities rather than $all, which the embedded FerretDB 1.x
	// does not match on a path into an array of documents.
	err := s.chats.FindOne(ctx, bson.D{
		{Key: "$and", Value: bson.A{
			bson.D{{Key: "participants.user_id", Value: a}},
			bson.D{{Key: "participants.user_id", Value: b}},
		}},
		{Key: "chatType", Value: typeGroup},
	}, options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("share group: %w", err)
	}
	return true, nil
}
