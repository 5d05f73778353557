package chat

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/media"
)

// inviteDoc is a document of the invites collection: a code by which
// users join a group. Its code is its _id, 16 random bytes, so that codes
// cannot be guessed.
type inviteDoc struct {
	Code       string        `bson:"_id"`
	ChatID     bson.ObjectID `bson:"chatId"`
	CreatorID  int           `bson:"creatorId"`
	CreatedAt  time.Time     `bson:"createdAt"`
	ExpiresAt  *time.Time    `bson:"expiresAt,omitempty"`
	UsageLimit int           `bson:"usageLimit,omitempty"`
	Uses       int           `bson:"uses"`
	// Left is how many joins a link with a UsageLimit has left (absent
	// on a link without one), kept beside Uses so that a query can tell
	// a used-up link from one in use.
	Left      int        `bson:"left,omitempty"`
	RevokedAt *time.Time `bson:"revokedAt,omitempty"`
}

// maxListedInvites bounds ListInviteLinks' links out of use (revoked,
// expired or used up); maxActiveInvites bounds the links of a group in
// use, which ListInviteLinks always lists all of, so that an admin can
// see and revoke every link another made.
const (
	maxListedInvites = 100
	maxActiveInvites = 100
)

// errTooManyInvites refuses a link past maxActiveInvites.
var errTooManyInvites = connect.NewError(connect.CodeFailedPrecondition,
	fmt.Errorf("a group has at most %d invite links in use; revoke one first", maxActiveInvites))

var inviteIndexes = []mongo.IndexModel{
	// ListInviteLinks: a group's links, the newest first.
	{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "createdAt", Value: -1}}, Options: options.Index().SetName("chatId_createdAt")},
}

// errNoInvite answers every code that does not lead to a group, whatever
// the reason, so that a code's past tells nothing.
var errNoInvite = connect.NewError(connect.CodeNotFound, errors.New("no such invite, or it no longer works"))

// usable reports whether the link still lets users join at now.
func (d *inviteDoc) usable(now time.Time) bool {
	return d.RevokedAt == nil && (d.ExpiresAt == nil || d.ExpiresAt.After(now)) && (d.UsageLimit == 0 || d.Uses < d.UsageLimit)
}

func newInviteCode() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *store) insertInvite(ctx context.Context, d *inviteDoc) error {
	if _, err := s.invites.InsertOne(ctx, d); err != nil {
		return fmt.Errorf("create invite: %w", err)
	}
	return nil
}

func (s *store) invite(ctx context.Context, code string) (*inviteDoc, error) {
	var d inviteDoc
	err := s.invites.FindOne(ctx, bson.D{{Key: "_id", Value: code}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoInvite
	}
	if err != nil {
		return nil, fmt.Errorf("get invite: %w", err)
	}
	return &d, nil
}

// backfillInviteLeft gives the links with a usage limit made before
// inviteDoc.Left existed the joins they have left, so that they count as
// in use while they do. Cheap once done: none is left to find.
func backfillInviteLeft(ctx context.Context, db *mongo.Database) error {
	invites := db.Collection("invites")
	cur, err := invites.Find(ctx, bson.D{
		{Key: "usageLimit", Value: bson.D{{Key: "$gt", Value: 0}}}, {Key: "left", Value: bson.D{{Key: "$exists", Value: false}}},
	})
	if err != nil {
		return fmt.Errorf("invites without joins left: %w", err)
	}
	var ds []inviteDoc
	if err := cur.All(ctx, &ds); err != nil {
		return fmt.Errorf("invites without joins left: %w", err)
	}
	for _, d := range ds {
		_, err := invites.UpdateOne(ctx, bson.D{{Key: "_id", Value: d.Code}, {Key: "left", Value: bson.D{{Key: "$exists", Value: false}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "left", Value: max(d.UsageLimit-d.Uses, 0)}}}})
		if err != nil {
			return fmt.Errorf("invite's joins left: %w", err)
		}
	}
	return nil
}

// openLink is the condition of a link neither revoked nor expired at now.
func openLink(now time.Time) bson.D {
	return bson.D{
		{Key: "revokedAt", Value: bson.D{{Key: "$exists", Value: false}}},
		{Key: "$or", Value: bson.A{
			bson.D{{Key: "expiresAt", Value: bson.D{{Key: "$exists", Value: false}}}},
			bson.D{{Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: now}}}},
		}},
	}
}

// inUse is the condition of a link in use at now: open (openLink), and with joins
// left if it has a limit.
func inUse(now time.Time) bson.D {
	return bson.D{{Key: "$and", Value: bson.A{openLink(now), bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: "usageLimit", Value: bson.D{{Key: "$exists", Value: false}}}},
		bson.D{{Key: "usageLimit", Value: bson.D{{Key: "$lte", Value: 0}}}},
		bson.D{{Key: "left", Value: bson.D{{Key: "$gt", Value: 0}}}},
	}}}}}}
}

// activeInvites is the filter of a group's links in use at now.
func activeInvites(chatID bson.ObjectID, now time.Time) bson.D {
	return append(bson.D{{Key: "chatId", Value: chatID}}, inUse(now)...)
}

// activeInviteCount counts a group's links in use.
func (s *store) activeInviteCount(ctx context.Context, chatID bson.ObjectID) (int64, error) {
	n, err := s.invites.CountDocuments(ctx, activeInvites(chatID, s.nowMs()))
	if err != nil {
		return 0, fmt.Errorf("count invites: %w", err)
	}
	return n, nil
}

// invitesOf returns the group's links in use, all of them (racing
// creations may pass maxActiveInvites by a few; the answer stays
// bounded), the newest first, then its links out of use, the newest
// first, up to maxListedInvites of those.
func (s *store) invitesOf(ctx context.Context, chatID bson.ObjectID) ([]inviteDoc, error) {
	now := s.nowMs()
	var out []inviteDoc
	newest := func(filter bson.D, limit int64) error {
		cur, err := s.invites.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}).SetLimit(limit))
		if err != nil {
			return fmt.Errorf("list invites: %w", err)
		}
		var ds []inviteDoc
		if err := cur.All(ctx, &ds); err != nil {
			return fmt.Errorf("list invites: %w", err)
		}
		out = append(out, ds...)
		return nil
	}
	if err := newest(activeInvites(chatID, now), 2*maxActiveInvites); err != nil {
		return nil, err
	}
	if err := newest(bson.D{{Key: "chatId", Value: chatID}, {Key: "$nor", Value: bson.A{inUse(now)}}}, maxListedInvites); err != nil {
		return nil, err
	}
	return out, nil
}

// revokeInvite revokes the group's link, once, and returns it.
func (s *store) revokeInvite(ctx context.Context, chatID bson.ObjectID, code string) (*inviteDoc, error) {
	var d inviteDoc
	err := s.locked(ctx, "invite:"+code, func() error {
		_, err := s.invites.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: code}, {Key: "chatId", Value: chatID}, {Key: "revokedAt", Value: bson.D{{Key: "$exists", Value: false}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "revokedAt", Value: s.nowMs()}}}})
		if err != nil {
			return err
		}
		return s.invites.FindOne(ctx, bson.D{{Key: "_id", Value: code}, {Key: "chatId", Value: chatID}}).Decode(&d)
	})
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoInvite
	}
	if err != nil {
		return nil, fmt.Errorf("revoke invite: %w", err)
	}
	return &d, nil
}

// useInvite takes one of the link's joins, if it still has any: one
// conditional update, so that racing joins never exceed the limit.
func (s *store) useInvite(ctx context.Context, d *inviteDoc, delta int) (bool, error) {
	filter := bson.D{{Key: "_id", Value: d.Code}}
	if delta > 0 {
		filter = append(filter, openLink(s.nowMs())...)
		if d.UsageLimit > 0 {
			filter = append(filter, bson.E{Key: "uses", Value: bson.D{{Key: "$lt", Value: d.UsageLimit}}})
		}
	}
	inc := bson.D{{Key: "uses", Value: delta}}
	if d.UsageLimit > 0 {
		inc = append(inc, bson.E{Key: "left", Value: -delta})
	}
	var res *mongo.UpdateResult
	err := s.locked(ctx, "invite:"+d.Code, func() (err error) {
		res, err = s.invites.UpdateOne(ctx, filter, bson.D{{Key: "$inc", Value: inc}})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("use invite: %w", err)
	}
	return res.ModifiedCount == 1, nil
}

func toInvite(d *inviteDoc) *parleyv1.InviteLink {
	out := &parleyv1.InviteLink{
		Code: d.Code, ChatId: d.ChatID.Hex(), CreatorId: int32(d.CreatorID), CreatedAt: timestamppb.New(d.CreatedAt),
		UsageLimit: int32(d.UsageLimit), UsageCount: int32(d.Uses),
	}
	if d.ExpiresAt != nil {
		out.ExpireTime = timestamppb.New(*d.ExpiresAt)
	}
	if d.RevokedAt != nil {
		out.RevokedAt = timestamppb.New(*d.RevokedAt)
	}
	return out
}

// CreateInviteLink makes an invite link to a group.
func (s *Service) CreateInviteLink(
	ctx context.Context, req *connect.Request[parleyv1.CreateInviteLinkRequest],
) (*connect.Response[parleyv1.CreateInviteLinkResponse], error) {
	id, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	now := s.store.nowMs()
	d := &inviteDoc{Code: newInviteCode(), ChatID: c.ID, CreatorID: id.UserID, CreatedAt: now,
		UsageLimit: int(req.Msg.GetUsageLimit()), Left: int(req.Msg.GetUsageLimit())}
	if t := req.Msg.GetExpireTime(); t != nil {
		at := t.AsTime().UTC().Truncate(time.Millisecond)
		if !at.After(now) {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("expire_time: not in the future"))
		}
		d.ExpiresAt = &at
	}
	// Racing creations may pass the bound by a few; every link in use
	// is still listed.
	if n, err := s.store.activeInviteCount(ctx, c.ID); err != nil {
		return nil, s.internal(ctx, "create invite link", err)
	} else if n >= maxActiveInvites {
		return nil, errTooManyInvites
	}
	if err := s.store.insertInvite(ctx, d); err != nil {
		return nil, s.internal(ctx, "create invite link", err)
	}
	return connect.NewResponse(&parleyv1.CreateInviteLinkResponse{InviteLink: toInvite(d)}), nil
}

// ListInviteLinks lists a group's invite links.
func (s *Service) ListInviteLinks(
	ctx context.Context, req *connect.Request[parleyv1.ListInviteLinksRequest],
) (*connect.Response[parleyv1.ListInviteLinksResponse], error) {
	_, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	ds, err := s.store.invitesOf(ctx, c.ID)
	if err != nil {
		return nil, s.internal(ctx, "list invite links", err)
	}
	res := &parleyv1.ListInviteLinksResponse{}
	for i := range ds {
		res.InviteLinks = append(res.InviteLinks, toInvite(&ds[i]))
	}
	return connect.NewResponse(res), nil
}

// RevokeInviteLink ends a group's invite link.
func (s *Service) RevokeInviteLink(
	ctx context.Context, req *connect.Request[parleyv1.RevokeInviteLinkRequest],
) (*connect.Response[parleyv1.RevokeInviteLinkResponse], error) {
	_, c, _, err := s.adminAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	d, err := s.store.revokeInvite(ctx, c.ID, req.Msg.GetCode())
	if errors.Is(err, errNoInvite) {
		return nil, err
	}
	if err != nil {
		return nil, s.internal(ctx, "revoke invite link", err)
	}
	return connect.NewResponse(&parleyv1.RevokeInviteLinkResponse{InviteLink: toInvite(d)}), nil
}

// usableInvite returns the invite of a code that leads to a group, with
// the group.
func (s *Service) usableInvite(ctx context.Context, code string) (*inviteDoc, *chatDoc, error) {
	d, c, err := s.inviteChat(ctx, code)
	if err != nil {
		return nil, nil, err
	}
	if !d.usable(s.store.nowMs()) {
		return nil, nil, errNoInvite
	}
	return d, c, nil
}

// inviteChat returns the invite of a code, usable or not, and its group.
func (s *Service) inviteChat(ctx context.Context, code string) (*inviteDoc, *chatDoc, error) {
	d, err := s.store.invite(ctx, code)
	if err != nil {
		return nil, nil, err
	}
	c, err := s.store.getChat(ctx, d.ChatID)
	if errors.Is(err, errNoChat) || (err == nil && len(c.Participants) == 0) {
		// A group whose last member left is to be purged.
		return nil, nil, errNoInvite
	}
	if err != nil {
		return nil, nil, err
	}
	return d, c, nil
}

// GetInvite tells what group an invite code leads to.
func (s *Service) GetInvite(
	ctx context.Context, req *connect.Request[parleyv1.GetInviteRequest],
) (*connect.Response[parleyv1.GetInviteResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	_, c, err := s.usableInvite(ctx, req.Msg.GetCode())
	if errors.Is(err, errNoInvite) {
		return nil, err
	}
	if err != nil {
		return nil, s.internal(ctx, "get invite", err)
	}
	return connect.NewResponse(&parleyv1.GetInviteResponse{
		ChatId: c.ID.Hex(), Name: c.Name, Description: c.Description, MemberCount: int32(len(c.Participants)),
		Member: c.participant(id.UserID) != nil,
	}), nil
}

// JoinChatByInvite makes the caller a member of the group of an invite.
func (s *Service) JoinChatByInvite(
	ctx context.Context, req *connect.Request[parleyv1.JoinChatByInviteRequest],
) (*connect.Response[parleyv1.JoinChatByInviteResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	// A member already is answered, whether the invite still works or
	// not, and its join announced again if it is not yet: the call that
	// made it one may have failed to announce it (errNotDelivered), and
	// used the invite's last join.
	d, c, err := s.inviteChat(ctx, req.Msg.GetCode())
	switch {
	case errors.Is(err, errNoInvite):
		return nil, err
	case err != nil:
		return nil, s.internal(ctx, "join chat", err)
	case c.participant(id.UserID) != nil:
		if c.arrivedSince(id.UserID, id.UserID, s.now().Add(-departureMemory)) {
			upTo := s.store.nowMs()
			if err := s.publishChat(ctx, c.ID, membersAdded, id.UserID, id.UserID); err != nil {
				return nil, s.internal(ctx, "join chat", err)
			}
			s.changesAnnounced(ctx, c.ID, arrivals, []int{id.UserID}, id.UserID, upTo)
		}
	case !d.usable(s.store.nowMs()):
		return nil, errNoInvite
	default:
		if err := s.join(ctx, d, c, id.UserID); err != nil {
			return nil, err
		}
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "join chat", err)
	}
	return connect.NewResponse(&parleyv1.JoinChatByInviteResponse{Chat: chat}), nil
}

// join adds the user to the group by the invite, taking one of its joins
// first and giving it back when the user does not join after all (a full
// group, a member already: another join of the user's won the race).
func (s *Service) join(ctx context.Context, d *inviteDoc, c *chatDoc, userID int) error {
	ok, err := s.store.useInvite(ctx, d, 1)
	if err != nil {
		return s.internal(ctx, "join chat", err)
	}
	if !ok {
		return errNoInvite
	}
	joined := false
	defer func() {
		if !joined {
			if _, err := s.store.useInvite(context.WithoutCancel(ctx), d, -1); err != nil {
				s.log.WarnContext(ctx, "give an invite's join back", "chat", c.ID.Hex(), "err", err)
			}
		}
	}()
	// As AddParticipants: the history before the join counts as read.
	if err := s.store.startPositions(ctx, c.ID, []int{userID}, lastSeq(c)); err != nil {
		return s.internal(ctx, "join chat", err)
	}
	_, err = s.store.changeMembers(ctx, c.ID, userID, func(c *chatDoc) ([]participantDoc, error) {
		joined = false
		if c.Type != typeGroup || len(c.Participants) == 0 {
			return nil, errNoInvite
		}
		if c.participant(userID) != nil {
			return nil, errNoChange
		}
		if len(c.Participants)+1 > MaxGroupSize {
			return nil, errTooManyMember
		}
		joined = true
		return append(slices.Clone(c.Participants), participantDoc{UserID: userID, Role: roleMember}), nil
	})
	if err != nil {
		joined = false
		if errors.Is(err, errNoInvite) || errors.Is(err, errTooManyMember) {
			return err
		}
		return s.internal(ctx, "join chat", err)
	}
	// Announced when another join of the user's won the race too.
	upTo := s.store.nowMs()
	if err := s.publishChat(ctx, c.ID, membersAdded, userID, userID); err != nil {
		return s.internal(ctx, "join chat", err)
	}
	s.changesAnnounced(ctx, c.ID, arrivals, []int{userID}, userID, upTo)
	return nil
}

// setAvatar makes the upload mediaHex the group's avatar ("": none). The
// changes of one group's avatar run one at a time, on every instance
// (under a Redis lock), from the chat as it is then: the upload
// being replaced is detached, the chat changed, and that upload deleted,
// so that no other change of the avatar, which could make that upload the
// avatar again, comes between; the caller's role is checked again under
// the lock. The latest change wins (setLatest, should the lock have
// lapsed under a change stalled past doclock.MaxHold); the upload it replaces,
// or that lost, is deleted unless a change made since took it over (the
// claims compared). If the change stops half-way, clean-up deletes the
// detached upload, or attaches it again if it is still the avatar. Making
// the avatar the upload it is already (a retry) changes nothing.
func (s *Service) setAvatar(ctx context.Context, userID int, chatID bson.ObjectID, mediaHex string) error {
	if s.media == nil {
		return connect.NewError(connect.CodeUnimplemented, errors.New("uploads are not configured"))
	}
	err := s.avatarLocks.Do(ctx, chatID.Hex(), func() error {
		c, err := s.store.getChat(ctx, chatID)
		if err != nil {
			return s.internal(ctx, "update chat", err)
		}
		// UpdateChat checked the caller's role before the lock; a
		// change waiting for it may have lost the role since.
		if p := c.participant(userID); p == nil || p.Role != roleAdmin {
			return errNotAdmin
		}
		return s.changeAvatar(ctx, userID, c, mediaHex)
	})
	if err != nil {
		return s.internal(ctx, "update chat", err)
	}
	return nil
}

// changeAvatar is setAvatar's change, under its lock, of chat c as read
// there.
func (s *Service) changeAvatar(ctx context.Context, userID int, c *chatDoc, mediaHex string) error {
	url := ""
	var claim, oldClaim media.Claim
	if mediaHex != "" {
		id, err := bson.ObjectIDFromHex(mediaHex)
		if err != nil {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("avatar_media_id: not a media id"))
		}
		if url, claim, err = s.media.ClaimGroupAvatar(ctx, userID, id, c.ID); err != nil {
			return s.internal(ctx, "update chat", err)
		}
	}
	if old := c.AvatarURL; old != "" && old != url {
		var err error
		if oldClaim, err = s.media.DetachGroupAvatar(ctx, old, c.ID); err != nil {
			return s.internal(ctx, "update chat", err)
		}
	}
	if err := s.store.setLatest(ctx, c.ID, "avatarUrl", url); err != nil {
		return s.internal(ctx, "update chat", err)
	}
	now, err := s.store.getChat(ctx, c.ID)
	if err != nil {
		return s.internal(ctx, "update chat", err)
	}
	if url != "" {
		if now.AvatarURL != url {
			// Another admin's change came later and won.
			if err := s.media.DeleteGroupAvatar(ctx, url, c.ID, claim); err != nil {
				return s.internal(ctx, "update chat", err)
			}
			return nil
		}
		if err := s.media.AttachGroupAvatar(ctx, url, c.ID, claim); err != nil {
			return s.internal(ctx, "update chat", err)
		}
	}
	if old := c.AvatarURL; old != "" && old != now.AvatarURL {
		if err := s.media.DeleteGroupAvatar(ctx, old, c.ID, oldClaim); err != nil {
			return s.internal(ctx, "update chat", err)
		}
	}
	return nil
}

// GroupHasAvatar reports whether the group's avatar is url, for media
// clean-up.
func (s *Service) GroupHasAvatar(ctx context.Context, chatID bson.ObjectID, url string) (bool, error) {
	c, err := s.store.getChat(ctx, chatID)
	if errors.Is(err, errNoChat) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return c.AvatarURL == url, nil
}
