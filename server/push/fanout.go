package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
)

// PreviewRunes bounds a push's preview of a message's text.
const PreviewRunes = 100

// Payload is what a push carries, as JSON (see parley.v1.PushService).
type Payload struct {
	// Kind is KindMessage, KindMention or KindReaction.
	Kind string `json:"kind"`
	// ChatID, ChatType ("private" or "group") and ChatTitle (a group's
	// name, the other member's in a private chat) describe the chat.
	ChatID    string `json:"chat_id"`
	ChatType  string `json:"chat_type"`
	ChatTitle string `json:"chat_title,omitempty"`
	// SenderID and SenderName are who sent the message or reacted.
	SenderID   int    `json:"sender_id"`
	SenderName string `json:"sender_name,omitempty"`
	// Seq is the message's in its chat, and MessageID its id.
	Seq       int64  `json:"seq"`
	MessageID string `json:"message_id,omitempty"`
	// Preview is the start of the message's text, absent when the user
	// chose no previews.
	Preview string `json:"preview,omitempty"`
	// Emoji is a reaction's.
	Emoji string `json:"emoji,omitempty"`
}

// Pushes' time to live at the push service, and their urgency.
const (
	messageTTL  = 24 * time.Hour
	reactionTTL = time.Hour
)

// Events wraps next, the live delivery of chat events, so that a new
// message or a reaction also queues a push job, in the same Redis round
// trip as the event, behind the event's own commands. The job is queued
// once, although next runs the commands again when Redis had forgotten
// its logging script; and a queue that refuses it costs the push, not the
// event (see queue.addReported).
func (s *Service) Events(next chat.Events) chat.Events { return &events{Events: next, s: s} }

type events struct {
	chat.Events
	s *Service
}

func (e *events) Publish(ctx context.Context, userIDs []int, ev *parleyv1.Event) error {
	return e.PublishWith(ctx, userIDs, ev, nil, nil)
}

func (e *events) PublishWith(ctx context.Context, userIDs []int, ev *parleyv1.Event, before, after func(redis.Pipeliner)) error {
	j := jobOf(userIDs, ev)
	if j == nil {
		return e.Events.PublishWith(ctx, userIDs, ev, before, after)
	}
	b, err := json.Marshal(j)
	if err != nil {
		e.s.log.ErrorContext(ctx, "push: encode a job; its pushes are lost", "chat", j.Chat, "err", err)
		jobsLost.Inc()
		return e.Events.PublishWith(ctx, userIDs, ev, before, after)
	}
	var queued *redis.Cmd
	err = e.Events.PublishWith(ctx, userIDs, ev, before, func(p redis.Pipeliner) {
		if after != nil {
			after(p)
		}
		if queued == nil {
			queued = e.s.queue.addReported(ctx, p, j, b)
		}
	})
	if err == nil && queued != nil {
		if err := queued.Err(); err != nil || !reportedAdded(queued) {
			if err == nil {
				err = fmt.Errorf("%v", queued.Val())
			}
			jobsLost.Inc()
			e.s.log.ErrorContext(ctx, "push: queue an event; its pushes are lost", "chat", j.Chat, "seq", j.Seq, "err", err)
		}
	}
	return err
}

// jobOf returns the job of an event that may push, nil for others.
func jobOf(userIDs []int, ev *parleyv1.Event) *job {
	if len(userIDs) < 2 {
		return nil // nobody but the actor
	}
	switch k := ev.GetKind().(type) {
	case *parleyv1.Event_MessageCreated:
		m := k.MessageCreated.GetMessage()
		if m == nil || m.GetDeleted() {
			return nil
		}
		j := &job{
			Type: jobEvent, Kind: KindMessage, Chat: m.GetChatId(), Seq: m.GetSeq(), Actor: int(m.GetSenderId()),
			Message: m.GetId(), Text: truncate(m.GetText(), PreviewRunes), MentionsAll: m.GetMentionsAll(), Users: userIDs,
		}
		for _, u := range m.GetMentionedUserIds() {
			j.Mentioned = append(j.Mentioned, int(u))
		}
		return j
	case *parleyv1.Event_ReactionsChanged:
		r := k.ReactionsChanged
		if !r.GetAdded() {
			return nil
		}
		return &job{
			Type: jobEvent, Kind: KindReaction, Chat: r.GetChatId(), Seq: r.GetSeq(), Actor: int(r.GetUserId()),
			Message: r.GetMessageId(), Emoji: r.GetEmoji(), Users: userIDs,
		}
	}
	return nil
}

// recipients are the users an event's job may push to: all but the
// actor, each once, in ascending order.
func (j *job) recipients() []int {
	out := slices.DeleteFunc(slices.Clone(j.Users), func(u int) bool { return u == j.Actor })
	slices.Sort(out)
	return slices.Compact(out)
}

// truncate cuts s to n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// target is one device to push to.
type target struct {
	user int
	sub  *subRecord
}

// fanOut decides who gets a push of an event, and queues one send job per
// device (the first of a collapse window), or one flush job for the end
// of its window: a job of the queue is at most one request to a push
// service, well within Config.ClaimAfter.
func (s *Service) fanOut(ctx context.Context, j *job) error {
	users := j.recipients()
	if j.Kind == KindReaction {
		// A reaction concerns the message's sender alone.
		sender, ok, err := s.chats.MessageSender(ctx, j.Chat, j.Message)
		if err != nil {
			return err
		}
		if !ok || !slices.Contains(users, sender) {
			return nil
		}
		users = []int{sender}
	}
	if len(users) == 0 {
		return nil
	}
	recips, err := s.store.recipients(ctx, users)
	if err != nil {
		return err
	}
	users = slices.DeleteFunc(users, func(u int) bool { return len(recips[u].subs) == 0 })
	if len(users) == 0 {
		return nil
	}
	// Users with a live stream open hear of the event there; only their
	// devices that asked for pushes always get one.
	online, err := s.presence.Online(ctx, users)
	if err != nil {
		return err
	}
	for i, u := range users {
		if online[i] {
			recips[u].subs = slices.DeleteFunc(recips[u].subs, func(r *subRecord) bool { return !r.Always })
		}
	}
	users = slices.DeleteFunc(users, func(u int) bool { return len(recips[u].subs) == 0 })
	if len(users) == 0 {
		return nil
	}
	c, ok, err := s.chats.PushChat(ctx, j.Chat, users)
	if err != nil || !ok {
		return err
	}
	users = slices.DeleteFunc(users, func(u int) bool {
		return slices.Contains(c.Muted, u) || !slices.Contains(c.Members, u)
	})
	var targets []target
	var ids []auth.Identity
	for _, u := range users {
		for _, r := range recips[u].subs {
			targets = append(targets, target{u, r})
			ids = append(ids, auth.Identity{UserID: u, SessionID: r.Session})
		}
	}
	if len(targets) == 0 {
		return nil
	}
	open, err := s.sessions.SessionsOpen(ctx, ids)
	if err != nil {
		return err
	}
	name, err := s.names.Name(ctx, j.Actor)
	if err != nil {
		return err
	}
	p := Payload{
		Kind: j.Kind, ChatID: j.Chat, ChatType: c.Type, ChatTitle: c.Title,
		SenderID: j.Actor, SenderName: name, Seq: j.Seq, MessageID: j.Message, Emoji: j.Emoji,
	}
	if c.Type != "group" {
		p.ChatTitle = name // the other member, from the recipient's side
	}
	var now, later []*job
	var at []time.Time
	for i, t := range targets {
		if !open[i] {
			if err := s.store.removeOf(ctx, t.user, t.sub); err != nil {
				return err
			}
			continue
		}
		p := p
		if j.Kind == KindMessage && (j.MentionsAll || slices.Contains(j.Mentioned, t.user)) {
			p.Kind = KindMention
		}
		if recips[t.user].settings.previews {
			p.Preview = j.Text
		}
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		due, err := s.store.collapse(ctx, t.user, t.sub.ID, j.Chat, p.Kind, s.cfg.Now(), s.cfg.Window, b)
		if err != nil {
			return err
		}
		if !due.IsZero() {
			// The window's latest goes when it ends; one flush job per
			// window, however many pushes it collapsed.
			later = append(later, &job{Type: jobFlush, User: t.user, Sub: t.sub.ID, Chat: j.Chat, Kind: p.Kind})
			at = append(at, due)
			continue
		}
		now = append(now, &job{Type: jobSend, User: t.user, Sub: t.sub.ID, Chat: j.Chat, Payload: b})
	}
	return s.queue.addAll(ctx, now, later, at)
}

// send delivers one push, giving the push service Config.SendTimeout; a
// push that may succeed later goes back to the queue, one to a
// subscription gone removes it. A retry, or a window's latest (flush),
// first looks for the push's message (a first try goes out as its
// message is made): a deleted message's retry does not go, and a
// window's latest goes without its text, as the window may have kept
// others. It fails when ctx ended first (the job is then left to another
// worker) or when the message could not be looked for (the job is
// retried).
func (s *Service) send(ctx context.Context, uid int, sub *subRecord, chatID string, payload []byte, attempt int, flush bool) error {
	// A push replaces the one of its topic the push service still keeps
	// for a device that is off: the chat's latest message, mention and
	// reaction each have their own, so that neither a message nor a
	// reaction takes the place of a mention.
	var p Payload
	_ = json.Unmarshal(payload, &p)
	opts := Options{TTL: messageTTL, Urgency: "normal", Topic: kindTag(p.Kind) + chatID}
	switch p.Kind {
	case KindMention:
		opts.Urgency = "high"
	case KindReaction:
		opts.TTL, opts.Urgency = reactionTTL, "low"
	}
	if (flush || attempt > 0) && p.MessageID != "" {
		if _, ok, err := s.chats.MessageSender(ctx, chatID, p.MessageID); err != nil {
			return err
		} else if !ok {
			if !flush {
				return nil
			}
			p.Preview, p.MessageID = "", ""
			if payload, err = json.Marshal(p); err != nil {
				return err
			}
		}
	}
	sctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
	res, err := s.cfg.Provider.Send(sctx, sub.subscription(), payload, opts)
	cancel()
	switch {
	case err == nil:
		pushesSent.Inc()
	case ctx.Err() != nil:
		return ctx.Err()
	case res.Gone:
		pushesGone.Inc()
		s.log.InfoContext(ctx, "push: subscription gone, removed", "user", uid, "subscription", sub.ID, "status", res.Status)
		if err := s.store.removeOf(ctx, uid, sub); err != nil {
			s.log.WarnContext(ctx, "push: remove a subscription", "user", uid, "err", err)
		}
	case res.Retry || errors.Is(err, context.DeadlineExceeded):
		// A push service that did not answer in time is tried again too.
		pushesFailed.Inc()
		s.retry(ctx, &job{Type: jobSend, User: uid, Sub: sub.ID, Chat: chatID, Payload: payload, Attempt: attempt}, res.RetryAfter, err)
	default:
		pushesFailed.Inc()
		s.log.WarnContext(ctx, "push: rejected", "user", uid, "subscription", sub.ID, "status", res.Status, "err", err)
	}
	return nil
}
