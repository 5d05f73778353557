// Package live implements parley.v1.LiveService: each user's events,
// logged in a Redis stream per user and fanned out through Redis pub/sub
// to the streams open on every instance, with resume from any cursor the
// log still holds; and presence.
//
// Writers (the chat service) call Hub.Publish with the users an event is
// for. Publish appends the event to each user's log and publishes it on
// the user's channel, in scripts (one call for up to 100 users on a
// single Redis, one per user on a Redis Cluster). Each instance's Hub holds a single
// pub/sub connection, subscribed to the channels of the users who have a
// stream open there, and hands each message to those streams' bounded
// queues without waiting (a queue grows as events come: an idle stream
// holds none). A stream first reads the log from its cursor,
// then takes live events from its queue, skipping those it already sent;
// whenever the pub/sub connection may have missed something (a new or
// renewed subscription) it reads the log again from where it stands.
//
// A stream lasts no longer than what let it open: it ends with
// UNAUTHENTICATED when the access token it was opened with expires (the
// client refreshes and resumes from its cursor), and when its session
// ends (Hub.SessionEnded, which auth calls, tells every instance through
// the user's channel; a stream also checks its session at each heartbeat
// and after each renewal of its subscription, in case the notice was
// lost). Open streams are counted against per-session and per-user
// limits, in Redis so that they hold across instances (see leases.go).
package live

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Chats is what live delivery needs to know about who shares chats, and
// so who may see whose presence; chat.Service implements it.
type Chats interface {
	// Contacts returns the users who may see the user's presence.
	Contacts(ctx context.Context, userID int) ([]int, error)
	// Sharing returns those of others whose presence the user may see.
	Sharing(ctx context.Context, userID int, others []int) ([]int, error)
	// LastSeenHidden returns those of the users who hide their
	// last-seen time from everyone else.
	LastSeenHidden(ctx context.Context, userIDs []int) ([]int, error)
}

// Sessions tells whether sessions are still open.
type Sessions interface {
	// SessionsOpen reports, for each caller, whether its session is open.
	SessionsOpen(ctx context.Context, ids []auth.Identity) ([]bool, error)
}

// CursorExpiredReason is the ErrorInfo reason of the FAILED_PRECONDITION
// error that tells a client to re-sync its chats.
const (
	CursorExpiredReason = "CURSOR_EXPIRED"
	ErrorDomain         = "parley.chat"
)

// readBatch is how many log entries one read takes.
const readBatch = 256

// Service implements LiveService.
type Service struct {
	log      *slog.Logger
	hub      *Hub
	chats    Chats
	sessions Sessions
}

var _ parleyv1connect.LiveServiceHandler = (*Service)(nil)

// NewService returns the live service over the instance's hub; the hub
// checks its streams' sessions with sessions from now on.
func NewService(log *slog.Logger, hub *Hub, chats Chats, sessions Sessions) *Service {
	s := &Service{log: log, hub: hub, chats: chats, sessions: sessions}
	hub.mu.Lock()
	// The hub's tick already runs: both under mu.
	hub.announce = s.announce
	hub.sessions = sessions
	hub.mu.Unlock()
	return s
}

func cursorExpired() error {
	err := connect.NewError(connect.CodeFailedPrecondition, errCursorExpired)
	if d, e := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: CursorExpiredReason, Domain: ErrorDomain}); e == nil {
		err.AddDetail(d)
	}
	return err
}

var errSlow = connect.NewError(connect.CodeResourceExhausted,
	errors.New("the stream fell too far behind; resubscribe with the last cursor"))

// What ends a stream with UNAUTHENTICATED.
var (
	errSessionEnded = errors.New("the session ended; sign in again")
	errTokenExpired = errors.New("the access token expired; refresh it and resubscribe with the last cursor")
)

// Subscribe streams the caller's events.
func (s *Service) Subscribe(
	ctx context.Context, req *connect.Request[parleyv1.SubscribeRequest], stream *connect.ServerStream[parleyv1.SubscribeResponse],
) error {
	id, err := auth.Caller(ctx)
	if err != nil {
		return err
	}
	last := req.Msg.GetResumeCursor()
	resumed := last != ""
	if resumed {
		if _, ok := parseCursor(last); !ok {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("resume_cursor: not a cursor"))
		}
	}

	if !id.Expires.IsZero() && !s.hub.cfg.Now().Before(id.Expires) {
		// Within the leeway the middleware allows for skewed clocks.
		return connect.NewError(connect.CodeUnauthenticated, errTokenExpired)
	}
	var expired <-chan time.Time
	if !id.Expires.IsZero() {
		t := time.NewTimer(id.Expires.Sub(s.hub.cfg.Now()))
		defer t.Stop()
		expired = t.C
	}
	lease, err := s.hub.acquire(ctx, id)
	if err != nil {
		return s.internal(ctx, err)
	}
	sub, first := s.hub.add(ctx, id, lease)
	defer func() {
		last := s.hub.remove(sub)
		s.hub.release(id.UserID, lease)
		if last {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.hub.settle(ctx, id.UserID, false); err != nil {
				s.log.Warn("live: presence", "user", id.UserID, "err", err)
			}
		}
	}()
	if first {
		// Bounded, as renewals wait for it. A failure is retried by the
		// hub's next expiry round (Hub.rejoin).
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.hub.settle(ctx, id.UserID, false)
		cancel()
		if err != nil {
			s.log.WarnContext(ctx, "live: presence", "user", id.UserID, "err", err)
		}
	}

	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case <-sub.ready:
	case <-wait.Done():
		if ctx.Err() != nil {
			return nil
		}
		return connect.NewError(connect.CodeUnavailable, errors.New("live delivery is unavailable; retry"))
	}

	if !resumed {
		if last, err = s.hub.tail(ctx, id.UserID); err != nil {
			return s.internal(ctx, err)
		}
	}
	w, unwatch := s.hub.newSender(ctx, stream)
	defer unwatch()

	// Replay, until no event came in while reading.
	var replayed int64
	for {
		n, err := s.catchUp(ctx, w, id.UserID, &last)
		replayed += n
		if err != nil {
			return s.end(ctx, err)
		}
		if err := sub.endedBy(); err != nil {
			return connect.NewError(connect.CodeUnauthenticated, err)
		}
		if sub.goLive() {
			break
		}
	}
	err = w.send(&parleyv1.Event{
		Cursor: last,
		Time:   s.hub.now(),
		Kind:   &parleyv1.Event_Ready{Ready: &parleyv1.Ready{Resumed: resumed, Replayed: replayed}},
	})
	if err != nil {
		return s.end(ctx, err)
	}

	lastID, _ := parseCursor(last)
	var spare []logged
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-expired:
			return connect.NewError(connect.CodeUnauthenticated, errTokenExpired)
		case <-sub.wake:
		}
		events, f := sub.take(spare)
		if f.ended != nil {
			return connect.NewError(connect.CodeUnauthenticated, f.ended)
		}
		if f.overflowed {
			return errSlow
		}
		if f.renewed {
			// Subscribed anew: a notice that the session ended may have
			// been missed.
			if open, err := s.sessions.SessionsOpen(ctx, []auth.Identity{id}); err != nil {
				return s.internal(ctx, err)
			} else if !open[0] {
				return connect.NewError(connect.CodeUnauthenticated, errSessionEnded)
			}
		}
		if f.dirty {
			// The subscription was renewed: what was published while it
			// was not is in the log, before the events now waiting, which
			// came after. Read it first, or those events would move the
			// cursor past it.
			if _, err := s.catchUp(ctx, w, id.UserID, &last); err != nil {
				return s.end(ctx, err)
			}
			lastID, _ = parseCursor(last)
		}
		for _, e := range events {
			if e.cursor != "" {
				c, ok := parseCursor(e.cursor)
				if !ok || !c.after(lastID) {
					continue // already sent from the log
				}
				lastID, last = c, e.cursor
			}
			if err := w.send(e.ev); err != nil {
				return s.end(ctx, err)
			}
			delivered(e.ev)
		}
		spare = events
		if f.beat {
			err := w.send(&parleyv1.Event{Time: s.hub.now(), Kind: &parleyv1.Event_Heartbeat{Heartbeat: &parleyv1.Heartbeat{}}})
			if err != nil {
				return s.end(ctx, err)
			}
		}
	}
}

// catchUp sends what the user's log holds after *last, moving *last.
func (s *Service) catchUp(ctx context.Context, w *sender, uid int, last *string) (int64, error) {
	var n int64
	for {
		entries, err := s.hub.readAfter(ctx, uid, *last, readBatch)
		if err != nil {
			return n, err
		}
		for _, e := range entries {
			if e.ev != nil {
				if err := w.send(e.ev); err != nil {
					return n, err
				}
				eventsDelivered.Inc()
				n++
			}
			*last = e.cursor
		}
		if len(entries) < readBatch {
			return n, nil
		}
	}
}

// end turns what stopped a stream into its final status: nothing when the
// client went away or the server is shutting down.
func (s *Service) end(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, errCursorExpired):
		return cursorExpired()
	case errors.Is(err, errWrite):
		return err
	}
	return s.internal(ctx, err)
}

func (s *Service) internal(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return rpcerr.From(ctx, s.log, "live", err)
}

// announce tells the user's contacts (those who may see its presence)
// that it came online or went offline, with the time unless the user
// hides it.
func (s *Service) announce(ctx context.Context, uid int, online bool, at time.Time) {
	contacts, err := s.chats.Contacts(ctx, uid)
	var hidden []int
	if err == nil && len(contacts) > 0 {
		hidden, err = s.chats.LastSeenHidden(ctx, []int{uid})
	}
	if err == nil && len(contacts) > 0 {
		if len(hidden) > 0 {
			at = time.Time{}
		}
		err = s.hub.Publish(ctx, contacts, &parleyv1.Event{Kind: &parleyv1.Event_Presence{Presence: &parleyv1.Presence{
			UserId: int32(uid), Online: online, LastSeen: timestampOf(at),
		}}})
	}
	if err != nil {
		s.log.Warn("live: announce presence", "user", uid, "err", err)
	}
}

// GetPresence tells whether users whose presence the caller may see are
// online, and since when they were not unless they hide it.
func (s *Service) GetPresence(
	ctx context.Context, req *connect.Request[parleyv1.GetPresenceRequest],
) (*connect.Response[parleyv1.GetPresenceResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var want []int
	self := false
	for _, u := range req.Msg.GetUserIds() {
		if int(u) == id.UserID {
			self = true
		} else {
			want = append(want, int(u))
		}
	}
	visible, err := s.chats.Sharing(ctx, id.UserID, want)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get presence", err)
	}
	hidden, err := s.chats.LastSeenHidden(ctx, visible)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get presence", err)
	}
	if self {
		visible = append(visible, id.UserID)
	}
	ps, err := s.hub.presence(ctx, visible)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get presence", err)
	}
	for _, p := range ps {
		if slices.Contains(hidden, int(p.GetUserId())) {
			p.LastSeen = nil
		}
	}
	return connect.NewResponse(&parleyv1.GetPresenceResponse{Presences: ps}), nil
}

// sender writes events to a stream, which the write watch (watch.go) cuts
// when its client takes none for the write timeout.
type sender struct {
	stream *connect.ServerStream[parleyv1.SubscribeResponse]
	watch  *watchedWriter // nil: the stream cannot be cut (no ResponseController)
}

var errWrite = connect.NewError(connect.CodeDeadlineExceeded, errors.New("the client stopped reading"))

// newSender returns the stream's sender, and the function that must be
// called once it is done with, before the stream's handler returns.
func (h *Hub) newSender(ctx context.Context, stream *connect.ServerStream[parleyv1.SubscribeResponse]) (*sender, func()) {
	rc, _ := ctx.Value(controllerKey{}).(*http.ResponseController)
	if rc == nil {
		return &sender{stream: stream}, func() {}
	}
	w, unwatch := h.watch(rc)
	return &sender{stream: stream, watch: w}, unwatch
}

func (w *sender) send(ev *parleyv1.Event) error {
	t, ok := w.watch.begin()
	if !ok {
		return errWrite
	}
	err := w.stream.Send(&parleyv1.SubscribeResponse{Event: ev})
	if !w.watch.end(t) || err != nil {
		return errWrite
	}
	return nil
}

type controllerKey struct{}

// WithWriteDeadlines lets the write watch (watch.go) cut Subscribe's
// streams through their write deadlines, so that a client that stops
// reading cannot hold a stream (and its goroutine) for ever. It wraps
// Subscribe's handler.
func WithWriteDeadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), controllerKey{}, http.NewResponseController(w))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
