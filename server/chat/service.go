// Package chat implements parley.v1.ChatService and MessageService over
// MongoDB: private and group chats in the customer's chats collection,
// whose participants say who is in a chat with which role, messages in
// its messages collection, and a positions collection that says how far
// each member has received and read.
//
// To a caller who is not a member, a chat does not exist: every method
// answers NOT_FOUND, the same as for a chat id that was never used.
//
// Consent (privacy.go): a new private chat is a request of its starter
// until the other member replies or accepts it; blocks and privacy
// settings, kept by the user package behind Privacy, decide who may start
// a private chat, send into one, add whom to a group and see whose
// presence, and a refusal never tells a block from a setting.
package chat

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/rpcerr"
)

// MaxGroupSize is the most members a group may have.
const MaxGroupSize = 500

// Page sizes of ListChats.
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

// Users is what chats need to know about accounts.
type Users interface {
	// MissingUsers returns those of ids that name no user.
	MissingUsers(ctx context.Context, ids []int) ([]int, error)
}

// Media is what messages need of uploaded files; media.Library
// implements it.
type Media interface {
	// Claim reserves the caller's ready uploads to a chat for the message
	// that key names, and returns what the message keeps of them.
	Claim(ctx context.Context, userID int, chatID bson.ObjectID, key string, ids []bson.ObjectID) ([]media.Attachment, error)
	// Attach records the stored message on the uploads it claimed.
	Attach(ctx context.Context, ids []bson.ObjectID, key string, messageID bson.ObjectID) error
	// Release frees uploads claimed under key that the message did not
	// take.
	Release(ctx context.Context, ids []bson.ObjectID, key string)
	// DeleteOfMessage deletes the files of a deleted message.
	DeleteOfMessage(ctx context.Context, messageID bson.ObjectID) error
	// DeleteOfGroup deletes the upload at url that is, or was being
	// made, the avatar of a group being purged.
	DeleteOfGroup(ctx context.Context, url string, chatID bson.ObjectID) error
	// ClaimGroupAvatar reserves an avatar upload of the user for the
	// group's avatar and returns its URL and the claim it made;
	// AttachGroupAvatar records that the group uses it, and
	// DeleteGroupAvatar deletes one the group no longer uses, if it
	// still holds the claim given.
	ClaimGroupAvatar(ctx context.Context, userID int, id, chatID bson.ObjectID) (string, media.Claim, error)
	AttachGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID, c media.Claim) error
	DeleteGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID, c media.Claim) error
	// DetachGroupAvatar makes the group's avatar upload a claim again,
	// before the avatar changes, so that clean-up deletes it if the
	// change stops half-way, and returns that claim.
	DetachGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID) (media.Claim, error)
	// Forward gives the message that key names, a forward by userID into
	// chatID, its own copies of the files ids of the message sourceID,
	// claimed for it as by Claim, and returns what the message keeps of
	// them (leaving out those that are missing).
	Forward(ctx context.Context, userID int, chatID bson.ObjectID, key string, sourceID bson.ObjectID, ids []bson.ObjectID) ([]media.Attachment, error)
}

// Service implements ChatService.
type Service struct {
	log       *slog.Logger
	store     *store
	seqs      *seqAllocator
	users     Users
	privacy   Privacy
	events    Events
	media     Media
	limiter   *redis_rate.Limiter
	sendLimit SendLimit
	sends     *sendCache
	// avatarLocks serialize the changes of one group's avatar, on every
	// engine (see setAvatar).
	avatarLocks *doclock.Locks
	// messageLocks serialize the edits and deletions of one message, on
	// every engine, from the message's reading to their announcement:
	// an edit that read the message before a deletion would otherwise
	// write its text into the chat's preview, and announce it, after the
	// deletion's tombstone.
	messageLocks *doclock.Locks
	redisPrefix  string
	now          func() time.Time
}

var (
	_ parleyv1connect.ChatServiceHandler    = (*Service)(nil)
	_ parleyv1connect.MessageServiceHandler = (*Service)(nil)
)

// New returns the chat and message service over the MongoDB database,
// allocating message sequence numbers in Redis under redisPrefix and
// announcing changes to events (none when nil), with the files of
// messages in files and users' blocks and privacy settings in privacy
// (none when nil: default settings, no blocks). locks serialize the updates of one document on
// engines that need it (see doclock); nil on MongoDB and FerretDB 2. now
// is the clock (time.Now when nil).
func New(log *slog.Logger, db *mongo.Database, rdb redis.UniversalClient, locks *doclock.Locks, redisPrefix string, users Users, privacy Privacy, events Events, files Media, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	if privacy == nil {
		privacy = noPrivacy{}
	}
	return &Service{
		log:          log,
		store:        newStore(db, rdb, locks, redisPrefix, now),
		seqs:         &seqAllocator{rdb: rdb, prefix: redisPrefix},
		users:        users,
		privacy:      privacy,
		events:       events,
		media:        files,
		limiter:      redis_rate.NewLimiter(rdb),
		sendLimit:    DefaultSendLimit,
		sends:        newSendCache(),
		avatarLocks:  doclock.New(rdb, redisPrefix+"chat:avatar:"),
		messageLocks: doclock.New(rdb, redisPrefix+"chat:message:"),
		redisPrefix:  redisPrefix,
		now:          now,
	}
}

var (
	errNotFound      = connect.NewError(connect.CodeNotFound, errNoChat)
	errNotAdmin      = connect.NewError(connect.CodePermissionDenied, errors.New("only the group's admins may do this"))
	errPrivate       = connect.NewError(connect.CodeFailedPrecondition, errors.New("private chats have no names, roles or members to change"))
	errLastAdmin     = connect.NewError(connect.CodeFailedPrecondition, errors.New("a group needs an admin: make another member admin first"))
	errTooManyMember = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("a group has at most %d members", MaxGroupSize))
)

func (s *Service) internal(ctx context.Context, what string, err error) error {
	if errors.Is(err, errNoChat) {
		return errNotFound
	}
	return rpcerr.From(ctx, s.log, what, err)
}

// IsMember reports whether the user is a member of the chat, as every
// chat RPC sees it: a private chat whose request the user declined is no
// chat of the user's (see memberOf).
func (s *Service) IsMember(ctx context.Context, chatID bson.ObjectID, userID int) (bool, error) {
	c, err := s.store.getChat(ctx, chatID)
	if errors.Is(err, errNoChat) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_, err = memberOf(c, userID)
	return err == nil, nil
}

// MessageWithMedia returns the message that senderID sent to a chat
// under clientMessageID, if it has the media among its attachments, for
// media clean-up.
func (s *Service) MessageWithMedia(ctx context.Context, chatID bson.ObjectID, senderID int, clientMessageID string, mediaID bson.ObjectID) (bson.ObjectID, bool, error) {
	m, err := s.store.messageWithMedia(ctx, chatID, senderID, clientMessageID, mediaID)
	if err != nil || m == nil {
		return bson.ObjectID{}, false, err
	}
	return m.ID, true, nil
}

func parseChatID(hex string) (bson.ObjectID, error) {
	id, err := bson.ObjectIDFromHex(hex)
	if err != nil {
		return id, connect.NewError(connect.CodeInvalidArgument, errors.New("chat_id: not a chat id"))
	}
	return id, nil
}

// access returns the chat and the caller's membership, or NOT_FOUND when
// the caller is not a member.
func (s *Service) access(ctx context.Context, chatHex string) (auth.Identity, *chatDoc, *member, error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return id, nil, nil, err
	}
	chatID, err := parseChatID(chatHex)
	if err != nil {
		return id, nil, nil, err
	}
	c, err := s.store.getChat(ctx, chatID)
	if err != nil {
		return id, nil, nil, s.internal(ctx, "chat access", err)
	}
	m, err := s.store.member(ctx, c, id.UserID)
	if err != nil {
		return id, nil, nil, s.internal(ctx, "chat access", err)
	}
	return id, c, m, nil
}

// adminAccess is access for the methods that change a group.
func (s *Service) adminAccess(ctx context.Context, chatHex string) (auth.Identity, *chatDoc, *member, error) {
	id, c, m, err := s.access(ctx, chatHex)
	if err != nil {
		return id, nil, nil, err
	}
	if c.Type != typeGroup {
		return id, nil, nil, errPrivate
	}
	if m.Role != roleAdmin {
		return id, nil, nil, errNotAdmin
	}
	return id, c, m, nil
}

// view renders the chat for the member, re-reading it so that the answer
// shows the change just made.
func (s *Service) view(ctx context.Context, chatID bson.ObjectID, userID int) (*parleyv1.Chat, error) {
	c, err := s.store.getChat(ctx, chatID)
	if err != nil {
		return nil, err
	}
	m, err := s.store.member(ctx, c, userID)
	if err != nil {
		return nil, err
	}
	return s.render(ctx, c, *m)
}

func (s *Service) render(ctx context.Context, c *chatDoc, m member) (*parleyv1.Chat, error) {
	unread, err := s.store.unreadBoth(ctx, c, m)
	if err != nil {
		return nil, err
	}
	settings, err := s.store.settings(ctx, m.UserID, []bson.ObjectID{c.ID})
	if err != nil {
		return nil, err
	}
	out := toChat(c, m, unread)
	out.Settings = toSettings(settings[c.ID], s.now())
	return out, nil
}

func (s *Service) checkUsersExist(ctx context.Context, ids []int) error {
	missing, err := s.users.MissingUsers(ctx, ids)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("no user with id %d", missing[0]))
	}
	return nil
}

// CreatePrivateChat returns the private chat with the peer, creating it on
// first use.
func (s *Service) CreatePrivateChat(
	ctx context.Context, req *connect.Request[parleyv1.CreatePrivateChatRequest],
) (*connect.Response[parleyv1.CreatePrivateChatResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	peer := int(req.Msg.GetPeerId())
	if peer == id.UserID {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("peer_id: a private chat needs another user"))
	}
	if err := s.checkUsersExist(ctx, []int{peer}); err != nil {
		return nil, s.internal(ctx, "create private chat", err)
	}
	c, err := s.store.findPrivate(ctx, id.UserID, peer)
	created := false
	switch {
	case err == nil:
		if slices.Contains(c.HiddenFor, id.UserID) {
			// The caller declined the peer's request and now starts a
			// chat with the peer after all: that accepts it.
			if err := s.accept(ctx, c, id.UserID); err != nil {
				return nil, err
			}
		}
	case errors.Is(err, errNoChat):
		if err := s.mayStartPrivate(ctx, id.UserID, peer); err != nil {
			return nil, s.internal(ctx, "create private chat", err)
		}
		if c, created, err = s.store.createPrivate(ctx, id.UserID, peer); err != nil {
			return nil, s.internal(ctx, "create private chat", err)
		}
	default:
		return nil, s.internal(ctx, "create private chat", err)
	}
	// A chat found with no message in it yet, hidden for neither, is
	// announced again, unless the peer would refuse it now: the call that
	// created it may have failed to (errNotDelivered).
	announce := created
	if !created && c.LastMessage == nil && len(c.HiddenFor) == 0 {
		switch err := s.mayStartPrivate(ctx, id.UserID, peer); {
		case err == nil:
			announce = true
		case !errors.Is(err, errRefused):
			return nil, s.internal(ctx, "create private chat", err)
		}
	}
	if announce {
		if err := s.publishChat(ctx, c.ID, chatCreated, id.UserID); err != nil {
			return nil, s.internal(ctx, "create private chat", err)
		}
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "create private chat", err)
	}
	return connect.NewResponse(&parleyv1.CreatePrivateChatResponse{Chat: chat, Created: created}), nil
}

// CreateGroupChat creates a group run by the caller.
func (s *Service) CreateGroupChat(
	ctx context.Context, req *connect.Request[parleyv1.CreateGroupChatRequest],
) (*connect.Response[parleyv1.CreateGroupChatResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var others []int
	for _, uid := range req.Msg.GetMemberIds() {
		if int(uid) != id.UserID {
			others = append(others, int(uid))
		}
	}
	if len(others)+1 > MaxGroupSize {
		return nil, errTooManyMember
	}
	if err := s.checkUsersExist(ctx, others); err != nil {
		return nil, s.internal(ctx, "create group", err)
	}
	others, refused, err := s.mayAdd(ctx, id.UserID, others)
	if err != nil {
		return nil, s.internal(ctx, "create group", err)
	}
	c, created, err := s.store.createGroup(ctx, id.UserID, req.Msg.GetName(), others, req.Msg.GetRequestId())
	if err != nil {
		return nil, s.internal(ctx, "create group", err)
	}
	if !created && c.participant(id.UserID) == nil {
		// The group of the request, which the caller has left since.
		return nil, errNotFound
	}
	// The group of a request made before is announced again: the call
	// that created it may have failed to (errNotDelivered).
	if err := s.publishChat(ctx, c.ID, chatCreated, id.UserID); err != nil {
		return nil, s.internal(ctx, "create group", err)
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "create group", err)
	}
	return connect.NewResponse(&parleyv1.CreateGroupChatResponse{Chat: chat, NotAddedUserIds: toInt32s(refused)}), nil
}

// GetChat returns one of the caller's chats.
func (s *Service) GetChat(
	ctx context.Context, req *connect.Request[parleyv1.GetChatRequest],
) (*connect.Response[parleyv1.GetChatResponse], error) {
	_, c, m, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	chat, err := s.render(ctx, c, *m)
	if err != nil {
		return nil, s.internal(ctx, "get chat", err)
	}
	return connect.NewResponse(&parleyv1.GetChatResponse{Chat: chat}), nil
}

// A ListChats page token is a chatPage (20 bytes: updatedAt in ms, then
// the chat id), or, while the caller's pinned chats are being listed, a
// marker byte and how many of them came before.
const pinnedPage = 0xff

func encodePage(p chatPage) string {
	b := make([]byte, 8, 20)
	binary.BigEndian.PutUint64(b, uint64(p.UpdatedAt.UnixMilli()))
	b = append(b, p.ID[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func encodePinnedPage(offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte{pinnedPage, byte(offset)})
}

// decodePage returns the page a token continues: a chatPage, or an offset
// into the pinned chats (pinned true).
func decodePage(s string) (p chatPage, offset int, pinned bool, err error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	switch {
	case err == nil && len(b) == 2 && b[0] == pinnedPage:
		return chatPage{}, int(b[1]), true, nil
	case err != nil || len(b) != 20:
		return chatPage{}, 0, false, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token from this method"))
	}
	p.UpdatedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8]))).UTC()
	copy(p.ID[:], b[8:])
	return p, 0, false, nil
}

// ListChats lists the caller's chats: pinned ones first, then the others
// that are not archived, most recent activity first; or the archived ones.
func (s *Service) ListChats(
	ctx context.Context, req *connect.Request[parleyv1.ListChatsRequest],
) (*connect.Response[parleyv1.ListChatsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = DefaultPageSize
	}
	var after *chatPage
	offset, inPinned := 0, !req.Msg.GetArchived()
	if tok := req.Msg.GetPageToken(); tok != "" {
		p, off, pinned, err := decodePage(tok)
		if err != nil {
			return nil, err
		}
		if pinned {
			offset = off
		} else {
			after, inPinned = &p, false
		}
	}
	apart, err := s.store.apart(ctx, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "list chats", err)
	}
	res := &parleyv1.ListChatsResponse{}
	var chats []chatDoc
	if inPinned {
		pinned, err := s.store.chatsByID(ctx, id.UserID, apart.pinned)
		if err != nil {
			return nil, s.internal(ctx, "list chats", err)
		}
		chats = pinned[min(offset, len(pinned)):]
		if len(chats) > size {
			chats = chats[:size]
			res.NextPageToken = encodePinnedPage(offset + size)
		}
	}
	if res.NextPageToken == "" {
		set := chatSet{notIn: append(slices.Clone(apart.pinned), apart.archived...)}
		if req.Msg.GetArchived() {
			set = chatSet{in: apart.archived}
			if set.in == nil {
				set.in = []bson.ObjectID{}
			}
		}
		need := size - len(chats)
		rest, err := s.store.listChats(ctx, id.UserID, set, after, need+1)
		if err != nil {
			return nil, s.internal(ctx, "list chats", err)
		}
		switch {
		case len(rest) > need && need == 0:
			// Pinned chats filled the page: the others start the next.
			res.NextPageToken = encodePinnedPage(offset + len(chats))
			rest = nil
		case len(rest) > need:
			rest = rest[:need]
			last := rest[need-1]
			res.NextPageToken = encodePage(chatPage{UpdatedAt: last.UpdatedAt, ID: last.ID})
		}
		chats = append(chats, rest...)
	}
	members, err := s.store.memberships(ctx, id.UserID, chats)
	if err != nil {
		return nil, s.internal(ctx, "list chats", err)
	}
	unread, err := s.store.unreadMany(ctx, chats, members)
	if err != nil {
		return nil, s.internal(ctx, "list chats", err)
	}
	ids := make([]bson.ObjectID, len(chats))
	for i := range chats {
		ids[i] = chats[i].ID
	}
	settings, err := s.store.settings(ctx, id.UserID, ids)
	if err != nil {
		return nil, s.internal(ctx, "list chats", err)
	}
	now := s.now()
	for i := range chats {
		c := toChat(&chats[i], members[chats[i].ID], unread[chats[i].ID])
		c.Settings = toSettings(settings[chats[i].ID], now)
		res.Chats = append(res.Chats, c)
	}
	return connect.NewResponse(res), nil
}

// UpdateChat changes a group's name, description or avatar.
func (s *Service) UpdateChat(
	ctx context.Context, req *connect.Request[parleyv1.UpdateChatRequest],
) (*connect.Response[parleyv1.UpdateChatResponse], error) {
	id, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	// The avatar first: its change is the one that may be refused (an
	// upload not found or used elsewhere, the role lost meanwhile), and
	// a refused call changes nothing.
	if req.Msg.GetAvatarMediaId() != "" || req.Msg.GetRemoveAvatar() {
		if err := s.setAvatar(ctx, id.UserID, c.ID, req.Msg.GetAvatarMediaId()); err != nil {
			return nil, err
		}
	}
	if req.Msg.Name != nil {
		if err := s.store.rename(ctx, c.ID, req.Msg.GetName()); err != nil {
			return nil, s.internal(ctx, "update chat", err)
		}
	}
	if req.Msg.Description != nil {
		if err := s.store.describe(ctx, c.ID, req.Msg.GetDescription()); err != nil {
			return nil, s.internal(ctx, "update chat", err)
		}
	}
	if err := s.publishChat(ctx, c.ID, chatUpdated, id.UserID); err != nil {
		return nil, s.internal(ctx, "update chat", err)
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "update chat", err)
	}
	return connect.NewResponse(&parleyv1.UpdateChatResponse{Chat: chat}), nil
}

// AddParticipants adds users to a group as members.
func (s *Service) AddParticipants(
	ctx context.Context, req *connect.Request[parleyv1.AddParticipantsRequest],
) (*connect.Response[parleyv1.AddParticipantsResponse], error) {
	id, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	// To add, and members already whose addition by the caller (a call
	// that may have failed to announce it: errNotDelivered) is not
	// announced yet. Other members already are neither added nor
	// announced again.
	var add, in []int
	since := s.now().Add(-departureMemory)
	for _, uid := range req.Msg.GetUserIds() {
		switch u := int(uid); {
		case c.participant(u) != nil:
			if c.arrivedSince(u, id.UserID, since) && !slices.Contains(in, u) {
				in = append(in, u)
			}
		case !slices.Contains(add, u):
			add = append(add, u)
		}
	}
	if err := s.checkUsersExist(ctx, add); err != nil {
		return nil, s.internal(ctx, "add participants", err)
	}
	add, refused, err := s.mayAdd(ctx, id.UserID, add)
	if err != nil {
		return nil, s.internal(ctx, "add participants", err)
	}
	// Those whose settings refuse the add do not count.
	if len(c.Participants)+len(add) > MaxGroupSize {
		return nil, errTooManyMember
	}
	if len(add) == 0 {
		return s.participantsAdded(ctx, c.ID, id.UserID, in, refused)
	}
	// Positions first: a member counts as having read the history
	// before it joined from the moment it is in.
	if err := s.store.startPositions(ctx, c.ID, add, lastSeq(c)); err != nil {
		return nil, s.internal(ctx, "add participants", err)
	}
	var added []int
	_, err = s.store.changeMembers(ctx, c.ID, id.UserID, func(c *chatDoc) ([]participantDoc, error) {
		if err := mustBeAdmin(c, id.UserID); err != nil {
			return nil, err
		}
		added = added[:0]
		parts := slices.Clone(c.Participants)
		for _, uid := range add {
			if c.participant(uid) == nil {
				parts = append(parts, participantDoc{UserID: uid, Role: roleMember})
			}
			added = append(added, uid)
		}
		if len(parts) == len(c.Participants) {
			return nil, errNoChange
		}
		if len(parts) > MaxGroupSize {
			return nil, errTooManyMember
		}
		return parts, nil
	})
	if err != nil {
		return nil, s.internal(ctx, "add participants", err)
	}
	return s.participantsAdded(ctx, c.ID, id.UserID, append(in, added...), refused)
}

// participantsAdded completes AddParticipants: it announces the users
// the request named who are members now, by this call or an earlier one
// of the caller's (which may have failed to announce them:
// errNotDelivered), and answers with the chat.
func (s *Service) participantsAdded(ctx context.Context, chatID bson.ObjectID, actor int, members, refused []int) (*connect.Response[parleyv1.AddParticipantsResponse], error) {
	if len(members) > 0 {
		upTo := s.store.nowMs()
		if err := s.publishChat(ctx, chatID, membersAdded, actor, members...); err != nil {
			return nil, s.internal(ctx, "add participants", err)
		}
		s.changesAnnounced(ctx, chatID, arrivals, members, actor, upTo)
	}
	chat, err := s.view(ctx, chatID, actor)
	if err != nil {
		return nil, s.internal(ctx, "add participants", err)
	}
	return connect.NewResponse(&parleyv1.AddParticipantsResponse{Chat: chat, NotAddedUserIds: toInt32s(refused)}), nil
}

// mustBeAdmin checks, on the chat as a membership change reads it, that
// the user is still one of its admins.
func mustBeAdmin(c *chatDoc, userID int) error {
	p := c.participant(userID)
	switch {
	case p == nil:
		return errNotFound
	case p.Role != roleAdmin:
		return errNotAdmin
	}
	return nil
}

// RemoveParticipant removes a user from a group.
func (s *Service) RemoveParticipant(
	ctx context.Context, req *connect.Request[parleyv1.RemoveParticipantRequest],
) (*connect.Response[parleyv1.RemoveParticipantResponse], error) {
	target := int(req.Msg.GetUserId())
	id, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if connect.CodeOf(err) == connect.CodeNotFound && target == id.UserID {
		// Not a member: an admin that removed itself lately is
		// retrying, maybe.
		c, err = s.departed(ctx, req.Msg.GetChatId(), id.UserID, err)
	}
	if err != nil {
		return nil, err
	}
	if err := s.leave(ctx, c.ID, id.UserID, target); err != nil {
		return nil, err
	}
	// Announced when the target had left already, lately, too: the call
	// that removed it failed to (errNotDelivered).
	upTo := s.store.nowMs()
	if err := s.publishChat(ctx, c.ID, memberRemoved, id.UserID, target); err != nil {
		return nil, s.internal(ctx, "remove participant", err)
	}
	s.changesAnnounced(ctx, c.ID, departures, []int{target}, id.UserID, upTo)
	if target == id.UserID {
		// An admin who removed itself sees the chat no more.
		return connect.NewResponse(&parleyv1.RemoveParticipantResponse{}), nil
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "remove participant", err)
	}
	return connect.NewResponse(&parleyv1.RemoveParticipantResponse{Chat: chat}), nil
}

var errNoParticipant = connect.NewError(connect.CodeNotFound, errors.New("no such participant"))

// leave takes the target out of the group, on the actor's behalf (an
// admin, unless the target leaves by itself), keeping an admin in a group
// that still has members. A target that the actor took out (or that
// left, when it is the actor) in the last departureMemory, without the
// departure announced, is out already: that is no error.
func (s *Service) leave(ctx context.Context, chatID bson.ObjectID, actor, target int) error {
	_, err := s.store.changeMembers(ctx, chatID, actor, func(c *chatDoc) ([]participantDoc, error) {
		if actor != target {
			if err := mustBeAdmin(c, actor); err != nil {
				return nil, err
			}
		}
		i := slices.IndexFunc(c.Participants, func(p participantDoc) bool { return p.UserID == target })
		if i < 0 && c.departedSince(target, actor, s.now().Add(-departureMemory)) {
			return nil, errNoChange
		}
		if i < 0 {
			if actor == target {
				return nil, errNotFound
			}
			return nil, errNoParticipant
		}
		rest := slices.Delete(slices.Clone(c.Participants), i, i+1)
		if c.Participants[i].Role == roleAdmin && len(rest) > 0 && !slices.ContainsFunc(rest, isAdmin) {
			return nil, errLastAdmin
		}
		return rest, nil
	})
	if err != nil {
		return s.internal(ctx, "leave chat", err)
	}
	// A member who comes back starts with no settings, and a pin of a
	// chat left counts no more against the limit.
	if err := s.store.forgetSettings(ctx, chatID, target); err != nil {
		s.log.WarnContext(ctx, "forget the chat settings of a former member", "chat", chatID.Hex(), "user", target, "err", err)
	}
	return nil
}

// changesAnnounced forgets the departures or arrivals (field) of the
// users by actor made up to upTo, a time taken before their announcement
// (a change made after it, which it did not announce, stays).
func (s *Service) changesAnnounced(ctx context.Context, chatID bson.ObjectID, field string, users []int, actor int, upTo time.Time) {
	if err := s.store.forgetChanges(ctx, chatID, field, users, actor, upTo); err != nil {
		// A retry within departureMemory announces them once more.
		s.log.WarnContext(ctx, "forget announced member changes", "chat", chatID.Hex(), "users", users, "err", err)
	}
}

// departed returns the chat if the user left it (by itself) in the last
// departureMemory and its departure was not announced, and notFound
// otherwise.
func (s *Service) departed(ctx context.Context, chatHex string, userID int, notFound error) (*chatDoc, error) {
	chatID, err := parseChatID(chatHex)
	if err != nil {
		return nil, err
	}
	c, err := s.store.getChat(ctx, chatID)
	if errors.Is(err, errNoChat) {
		return nil, notFound
	}
	if err != nil {
		return nil, s.internal(ctx, "leave chat", err)
	}
	if !c.departedSince(userID, userID, s.now().Add(-departureMemory)) {
		return nil, notFound
	}
	return c, nil
}

func isAdmin(p participantDoc) bool { return p.Role == roleAdmin }

// lastSeq is the seq of the chat's last message, 0 before the first.
func lastSeq(c *chatDoc) int64 {
	if c.LastMessage == nil {
		return 0
	}
	return c.LastMessage.Seq
}

// SetParticipantRole changes a member's role.
func (s *Service) SetParticipantRole(
	ctx context.Context, req *connect.Request[parleyv1.SetParticipantRoleRequest],
) (*connect.Response[parleyv1.SetParticipantRoleResponse], error) {
	target := int(req.Msg.GetUserId())
	role := roleMember
	if req.Msg.GetRole() == parleyv1.Role_ROLE_ADMIN {
		role = roleAdmin
	}
	id, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if errors.Is(err, errNotAdmin) && target == id.UserID && role == roleMember {
		// A member stepping down: an admin that stepped down is
		// retrying, maybe; it is announced again.
		return s.roleSet(ctx, req.Msg.GetChatId(), id.UserID, target)
	}
	if err != nil {
		return nil, err
	}
	_, err = s.store.changeMembers(ctx, c.ID, id.UserID, func(c *chatDoc) ([]participantDoc, error) {
		if err := mustBeAdmin(c, id.UserID); err != nil {
			return nil, err
		}
		i := slices.IndexFunc(c.Participants, func(p participantDoc) bool { return p.UserID == target })
		if i < 0 {
			return nil, errNoParticipant
		}
		if c.Participants[i].Role == role {
			return nil, errNoChange
		}
		parts := slices.Clone(c.Participants)
		parts[i].Role = role
		if !slices.ContainsFunc(parts, isAdmin) {
			return nil, errLastAdmin
		}
		return parts, nil
	})
	if err != nil {
		return nil, s.internal(ctx, "set role", err)
	}
	// Announced when the member had the role already too: the call that
	// gave it may have failed to (errNotDelivered).
	return s.roleSet(ctx, req.Msg.GetChatId(), id.UserID, target)
}

// roleSet completes SetParticipantRole: it announces the target's role
// and answers with the chat.
func (s *Service) roleSet(ctx context.Context, chatHex string, actor, target int) (*connect.Response[parleyv1.SetParticipantRoleResponse], error) {
	chatID, err := parseChatID(chatHex)
	if err != nil {
		return nil, err
	}
	if err := s.publishChat(ctx, chatID, roleChanged, actor, target); err != nil {
		return nil, s.internal(ctx, "set role", err)
	}
	chat, err := s.view(ctx, chatID, actor)
	if err != nil {
		return nil, s.internal(ctx, "set role", err)
	}
	return connect.NewResponse(&parleyv1.SetParticipantRoleResponse{Chat: chat}), nil
}

// LeaveChat takes the caller out of a group.
func (s *Service) LeaveChat(
	ctx context.Context, req *connect.Request[parleyv1.LeaveChatRequest],
) (*connect.Response[parleyv1.LeaveChatResponse], error) {
	id, c, _, err := s.access(ctx, req.Msg.GetChatId())
	if connect.CodeOf(err) == connect.CodeNotFound {
		// Not a member: one that left lately is retrying, maybe.
		c, err = s.departed(ctx, req.Msg.GetChatId(), id.UserID, err)
	}
	if err != nil {
		return nil, err
	}
	if c.Type != typeGroup {
		return nil, errPrivate
	}
	if err := s.leave(ctx, c.ID, id.UserID, id.UserID); err != nil {
		return nil, err
	}
	// Announced when the caller had left already, lately, too: the call
	// that took it out failed to (errNotDelivered).
	upTo := s.store.nowMs()
	if err := s.publishChat(ctx, c.ID, memberRemoved, id.UserID, id.UserID); err != nil {
		return nil, s.internal(ctx, "leave chat", err)
	}
	s.changesAnnounced(ctx, c.ID, departures, []int{id.UserID}, id.UserID, upTo)
	return connect.NewResponse(&parleyv1.LeaveChatResponse{}), nil
}
