package chat

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"slices"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/rivo/uniseg"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

var (
	errNotEmoji         = connect.NewError(connect.CodeInvalidArgument, errors.New("emoji: not a single emoji"))
	errReactDeleted     = connect.NewError(connect.CodeFailedPrecondition, errMessageDeleted)
	errReactionLimit    = connect.NewError(connect.CodeFailedPrecondition, errTooManyEmoji)
	errNotReactionToken = connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token from this method"))
)

// reactionTimeout bounds what a reaction's change does once its first
// write is made. The caller's context does not end it: a change left
// half-way would leave the message's emojis out of step and the change
// unannounced (a retry completes both, but it may not come).
const reactionTimeout = 10 * time.Second

// isEmoji reports whether s is one emoji: a single grapheme cluster (an
// emoji with its modifiers and joiners) with a character beyond ASCII in
// it, as "#" or "1" alone is no emoji but a keycap is. The request's rules
// have checked which characters it holds.
func isEmoji(s string) bool {
	if uniseg.GraphemeClusterCount(s) != 1 {
		return false
	}
	for _, r := range s {
		if r >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// AddReaction adds the caller's reaction with an emoji to a message.
func (s *Service) AddReaction(
	ctx context.Context, req *connect.Request[parleyv1.AddReactionRequest],
) (*connect.Response[parleyv1.AddReactionResponse], error) {
	emoji := req.Msg.GetEmoji()
	if !isEmoji(emoji) {
		return nil, errNotEmoji
	}
	c, me, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	if msg.DeletedAt != nil {
		return nil, errReactDeleted
	}
	if err := s.mayActInPrivate(ctx, c, me.UserID); err != nil {
		return nil, s.internal(ctx, "add reaction", err)
	}
	// An emoji the message has already needs no write to it: the add
	// reads the emojis again once its reaction is stored, and puts the
	// emoji back if a removal took it out meanwhile (see reactionAdded).
	if !slices.Contains(msg.Emojis, emoji) {
		if err := s.useEmoji(ctx, msg, emoji); err != nil {
			return nil, err
		}
	}
	// The errors are mapped with the request's context: one of wctx's
	// deadline is a store that did not answer (UNAVAILABLE).
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reactionTimeout)
	defer cancel()
	if err := s.store.addReaction(wctx, &reactionDoc{ChatID: c.ID, MessageID: msg.ID, UserID: me.UserID, Emoji: emoji}); err != nil {
		return nil, s.internal(ctx, "add reaction", err)
	}
	// A reaction the caller had already is completed and announced
	// again, as a new version: the call that added it may have failed
	// before either (errNotDelivered).
	reactions, err := s.reactionAdded(wctx, c, msg, me.UserID, emoji)
	if err != nil {
		return nil, s.internal(ctx, "add reaction", err)
	}
	return connect.NewResponse(&parleyv1.AddReactionResponse{Reactions: reactions}), nil
}

// useEmoji records the emoji among the message's emojis (see
// store.useEmoji). At the limit, it first frees those that no reaction
// uses any more, which a request that ended between recording its emoji
// and storing its reaction can leave, and tries again.
func (s *Service) useEmoji(ctx context.Context, msg *messageDoc, emoji string) error {
	err := s.store.useEmoji(ctx, msg.ChatID, msg.ID, emoji)
	if errors.Is(err, errTooManyEmoji) {
		freed, ferr := s.store.freeEmojis(ctx, msg.ChatID, msg.ID)
		if ferr != nil {
			return s.internal(ctx, "add reaction", ferr)
		}
		if freed {
			err = s.store.useEmoji(ctx, msg.ChatID, msg.ID, emoji)
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNoMessage):
		return errMessageNotFound
	case errors.Is(err, errMessageDeleted):
		return errReactDeleted
	case errors.Is(err, errTooManyEmoji):
		return errReactionLimit
	default:
		return s.internal(ctx, "add reaction", err)
	}
}

// reactionAdded completes the add of a reaction just stored: it makes a
// new version of the message's reactions and announces it, and returns
// the reactions as the user sees them.
func (s *Service) reactionAdded(ctx context.Context, c *chatDoc, msg *messageDoc, userID int, emoji string) ([]*parleyv1.Reaction, error) {
	now, err := s.store.bumpReactions(ctx, msg.ID)
	if err != nil {
		return nil, err
	}
	if now.DeletedAt != nil {
		// Deleted since the emoji was recorded: the delete may have
		// dropped the message's reactions before this one was stored.
		if err := s.store.removeReaction(ctx, msg.ID, userID, emoji); err != nil {
			return nil, err
		}
		return nil, errReactDeleted
	}
	if !slices.Contains(now.Emojis, emoji) {
		// The removal of the emoji's last other reaction, or freeEmojis,
		// took it out after this add recorded or found it (see
		// store.dropEmoji and store.restoreEmoji).
		back, err := s.store.restoreEmoji(ctx, msg.ID, emoji)
		if err != nil {
			return nil, err
		}
		if !back {
			// Its place was taken: the reaction goes, unannounced.
			if err := s.store.removeReaction(ctx, msg.ID, userID, emoji); err != nil {
				return nil, err
			}
			return nil, errReactionLimit
		}
	}
	counts, err := s.store.reactionCounts(ctx, []bson.ObjectID{msg.ID}, userID)
	if err != nil {
		return nil, err
	}
	if err := s.publishReactions(ctx, c, msg, userID, emoji, true, now.ReactVer, counts[msg.ID]); err != nil {
		return nil, err
	}
	return toReactions(counts[msg.ID], true), nil
}

// RemoveReaction takes the caller's reaction with an emoji back.
func (s *Service) RemoveReaction(
	ctx context.Context, req *connect.Request[parleyv1.RemoveReactionRequest],
) (*connect.Response[parleyv1.RemoveReactionResponse], error) {
	emoji := req.Msg.GetEmoji()
	if !isEmoji(emoji) {
		return nil, errNotEmoji
	}
	c, me, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	// The blocker would hear of it.
	if err := s.mayActInPrivate(ctx, c, me.UserID); err != nil {
		return nil, s.internal(ctx, "remove reaction", err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reactionTimeout)
	defer cancel()
	if err := s.store.removeReaction(wctx, msg.ID, me.UserID, emoji); err != nil {
		return nil, s.internal(ctx, "remove reaction", err)
	}
	// A reaction the caller did not have is completed and announced as
	// gone all the same, as a new version: the call that removed it may
	// have failed before either (errNotDelivered).
	reactions, err := s.reactionRemoved(wctx, c, msg, me.UserID, emoji)
	if err != nil {
		return nil, s.internal(ctx, "remove reaction", err)
	}
	return connect.NewResponse(&parleyv1.RemoveReactionResponse{Reactions: reactions}), nil
}

// reactionRemoved completes the removal of a reaction: a new version of
// the message's reactions, announced, and the emoji out of the message's
// emojis when it was the last of its kind. It returns the reactions as
// the user sees them.
func (s *Service) reactionRemoved(ctx context.Context, c *chatDoc, msg *messageDoc, userID int, emoji string) ([]*parleyv1.Reaction, error) {
	now, err := s.store.bumpReactions(ctx, msg.ID)
	if err != nil {
		return nil, err
	}
	if now.DeletedAt != nil {
		// A reaction whose add raced with the delete: gone with it.
		return nil, nil
	}
	counts, err := s.store.reactionCounts(ctx, []bson.ObjectID{msg.ID}, userID)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(counts[msg.ID], func(r reactionCount) bool { return r.Emoji == emoji }) {
		if err := s.store.dropEmoji(ctx, msg.ID, emoji); err != nil {
			return nil, err
		}
	}
	if err := s.publishReactions(ctx, c, msg, userID, emoji, false, now.ReactVer, counts[msg.ID]); err != nil {
		return nil, err
	}
	return toReactions(counts[msg.ID], true), nil
}

// publishReactions announces a change of the message's reactions, made
// by userID, to the chat's participants as the caller's access found
// them. No member's own reactions are marked in it.
func (s *Service) publishReactions(ctx context.Context, c *chatDoc, msg *messageDoc, userID int, emoji string, added bool, version int64, counts []reactionCount) error {
	if s.events == nil {
		return nil
	}
	ev := &parleyv1.Event{Kind: &parleyv1.Event_ReactionsChanged{ReactionsChanged: &parleyv1.ReactionsChanged{
		ChatId:    c.ID.Hex(),
		MessageId: msg.ID.Hex(),
		Seq:       msg.Seq,
		UserId:    int32(userID),
		Emoji:     emoji,
		Added:     added,
		Reactions: toReactions(counts, false),
		Version:   version,
	}}}
	return s.publishTo(ctx, c.ID, audience(c), ev)
}

// renderReactions sets, on each rendered message of out, the reactions
// of its document in docs as viewer (or forEvent) sees them: one query
// for the messages that have any, none when no message has.
func (s *Service) renderReactions(ctx context.Context, viewer int, docs []messageDoc, out []*parleyv1.Message) error {
	var ids []bson.ObjectID
	for i := range docs {
		if len(docs[i].Emojis) > 0 && docs[i].DeletedAt == nil {
			ids = append(ids, docs[i].ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	counts, err := s.store.reactionCounts(ctx, ids, viewer)
	if err != nil {
		return err
	}
	for i := range docs {
		if c := counts[docs[i].ID]; len(c) > 0 {
			out[i].Reactions = toReactions(c, true)
		}
	}
	return nil
}

// toReactions renders a message's counts, with the viewer's own marked
// when mine.
func toReactions(counts []reactionCount, mine bool) []*parleyv1.Reaction {
	out := make([]*parleyv1.Reaction, len(counts))
	for i, c := range counts {
		out[i] = &parleyv1.Reaction{Emoji: c.Emoji, Count: int32(c.N), Mine: mine && c.Mine}
	}
	return out
}

// ListReactions lists the members who reacted to a message with an
// emoji, the earliest first.
func (s *Service) ListReactions(
	ctx context.Context, req *connect.Request[parleyv1.ListReactionsRequest],
) (*connect.Response[parleyv1.ListReactionsResponse], error) {
	_, _, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = DefaultPageSize
	}
	var after *reactionPage
	if tok := req.Msg.GetPageToken(); tok != "" {
		p, err := decodeReactionPage(tok)
		if err != nil {
			return nil, err
		}
		after = &p
	}
	res := &parleyv1.ListReactionsResponse{}
	if msg.DeletedAt != nil {
		return connect.NewResponse(res), nil
	}
	rs, err := s.store.listReactions(ctx, msg.ID, req.Msg.GetEmoji(), after, size+1)
	if err != nil {
		return nil, s.internal(ctx, "list reactions", err)
	}
	if len(rs) > size {
		rs = rs[:size]
		last := rs[size-1]
		res.NextPageToken = encodeReactionPage(reactionPage{At: last.At, UserID: last.UserID})
	}
	for _, r := range rs {
		res.UserIds = append(res.UserIds, int32(r.UserID))
	}
	return connect.NewResponse(res), nil
}

func encodeReactionPage(p reactionPage) string {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, uint64(p.At.UnixMilli()))
	binary.BigEndian.PutUint64(b[8:], uint64(p.UserID))
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeReactionPage(s string) (reactionPage, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 16 {
		return reactionPage{}, errNotReactionToken
	}
	return reactionPage{
		At:     time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8]))).UTC(),
		UserID: int(binary.BigEndian.Uint64(b[8:])),
	}, nil
}
