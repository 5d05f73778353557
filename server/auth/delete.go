package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/rpcerr"
)

// AccountDeleter is what DeleteAccount needs of the domains that hold an
// account's data; server.New wires it to the user, chat and media
// services. Each step is idempotent and safe to run twice at once, so that
// a deletion stopped part-way (a crash, a store that failed) is finished
// by running all of it again, and two requests of one user, or a request
// and the sweep, may run it together.
type AccountDeleter interface {
	// MarkDeleted writes the account's tombstone: from then on it cannot
	// sign in (LookupLogin and Me do not find it), others do not find it,
	// and its username is held back. No such account is a connect
	// NOT_FOUND error; an account marked already is no error.
	MarkDeleted(ctx context.Context, userID int) error
	// LeaveChats takes the user out of every group it is in, as LeaveChat
	// does, making the longest-standing member admin of a group that
	// would have none, and closes its private chats to sends.
	LeaveChats(ctx context.Context, userID int) error
	// DeleteFiles deletes the user's uploads that no message and no
	// group uses (its avatars' files and what it never sent), its data
	// exports, its push subscriptions and settings, and its live event
	// log and presence.
	DeleteFiles(ctx context.Context, userID int) error
	// DeleteRows deletes the account, its profile, avatars and blocks.
	DeleteRows(ctx context.Context, userID int) error
	// MarkFinished marks the account's tombstone finished.
	MarkFinished(ctx context.Context, userID int) error
	// UnfinishedDeletions returns up to limit accounts whose deletion
	// began before before and did not finish, oldest first.
	UnfinishedDeletions(ctx context.Context, before time.Time, limit int) ([]int, error)
}

// DeleteAccountsWith has DeleteAccount delete accounts through d. Call it
// before the service serves; without it DeleteAccount is UNIMPLEMENTED.
func (s *Service) DeleteAccountsWith(d AccountDeleter) {
	s.deletions = &Deletions{
		log: s.log,
		end: func(ctx context.Context, userID int) error {
			if err := s.EndSessions(ctx, userID, ""); err != nil {
				return err
			}
			return s.limiter.forgetNetworks(ctx, userAccount(userID))
		},
		deleter: d,
		now:     s.cfg.Now,
	}
}

// Deletions carries out account deletions whose tombstone is written:
// DeleteAccount's, and those that stopped part-way, which its sweep
// (Sweep, Run) finishes.
type Deletions struct {
	log     *slog.Logger
	end     func(ctx context.Context, userID int) error
	deleter AccountDeleter
	now     func() time.Time
}

// NewDeletions returns the deletion of accounts through d for a sweep,
// ending their sessions in rdb as cfg has them (its RedisPrefix,
// RefreshTTL, Replicas, SessionEnds and Now), without a whole Service.
func NewDeletions(log *slog.Logger, rdb redis.UniversalClient, cfg Config, d AccountDeleter) *Deletions {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	sessions := &sessionStore{rdb: rdb, prefix: cfg.RedisPrefix, refreshTTL: cfg.RefreshTTL, now: cfg.Now, replicas: cfg.Replicas}
	limits := &limiter{rdb: rdb, prefix: cfg.RedisPrefix}
	return &Deletions{
		log: log,
		end: func(ctx context.Context, userID int) error {
			if err := endSessions(ctx, sessions, cfg.SessionEnds, userID, ""); err != nil {
				return err
			}
			return limits.forgetNetworks(ctx, userAccount(userID))
		},
		deleter: d,
		now:     cfg.Now,
	}
}

var errNoDeleter = connect.NewError(connect.CodeUnimplemented, errors.New("account deletion is not configured"))

// DeleteAccount deletes the caller's account after checking its password
// again. Nothing changes until the password is right; then the tombstone
// makes the account deleted to everyone at once, and the rest follows
// (see Deletions.finish), whether or not the client waits for it.
func (s *Service) DeleteAccount(
	ctx context.Context, req *connect.Request[parleyv1.DeleteAccountRequest],
) (*connect.Response[parleyv1.DeleteAccountResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if s.deletions == nil {
		return nil, errNoDeleter
	}
	if err := s.Reauthenticate(ctx, id.UserID, req.Msg.GetPassword()); err != nil {
		return nil, rpcerr.From(ctx, s.log, "delete account", err)
	}
	if err := s.deletions.deleter.MarkDeleted(ctx, id.UserID); err != nil {
		return nil, rpcerr.From(ctx, s.log, "delete account", err)
	}
	// From here the account is deleted: a client that hangs up does not
	// stop the rest, and a failure leaves it to the sweep, which the
	// answer need not wait for (the caller's session may be over by
	// then, so a retry could not help).
	if err := s.deletions.finish(context.WithoutCancel(ctx), id.UserID); err != nil {
		s.log.ErrorContext(ctx, "delete account: stopped part-way; the sweep finishes it", "user", id.UserID, "err", err)
	}
	return connect.NewResponse(&parleyv1.DeleteAccountResponse{}), nil
}

// finish carries out a deletion whose tombstone is written, in an
// order that loses nothing if it stops at any point and is run again:
//
//  1. every session ends, and with them the live streams (SessionEnds);
//     no new one can start, as sign-in no longer finds the account, and
//     one that passed that check before the tombstone either exists now
//     or is refused by signIn's check after it is created; the networks
//     it signed in from are forgotten;
//  2. the user leaves its chats, and the other members get the events
//     of a member who leaves;
//  3. its files, exports, push subscriptions and live event log go
//     (DeleteFiles);
//  4. the account's rows go;
//  5. steps 2 and 3 run again, for what requests under way when the
//     deletion began did after the first run (another device of the user
//     creating a group or an upload, an admin's add that checked the user
//     before the tombstone): a request would have to outlast the whole
//     deletion to escape it;
//  6. the tombstone is marked finished, last, so that an unfinished
//     tombstone always means work is left.
func (s *Deletions) finish(ctx context.Context, userID int) error {
	if err := s.end(ctx, userID); err != nil {
		return err
	}
	for pass := range 2 {
		if err := s.deleter.LeaveChats(ctx, userID); err != nil {
			return fmt.Errorf("leave chats: %w", err)
		}
		if err := s.deleter.DeleteFiles(ctx, userID); err != nil {
			return fmt.Errorf("delete files: %w", err)
		}
		if pass == 0 {
			if err := s.deleter.DeleteRows(ctx, userID); err != nil {
				return err
			}
		}
	}
	return s.deleter.MarkFinished(ctx, userID)
}

// deletionGrace is how long the sweep leaves a deletion to the request
// that began it: running it twice at once is safe, but wasted.
const deletionGrace = 5 * time.Minute

// DeletionSweepInterval is how often, on average, Run looks for deletions
// that stopped part-way.
const DeletionSweepInterval = 5 * time.Minute

// Sweep finishes the account deletions that began more than a few
// minutes ago and did not finish (their instance stopped, or a store
// failed, part-way), and returns how many it finished. Every instance may
// run it.
func (s *Deletions) Sweep(ctx context.Context) (int, error) {
	ids, err := s.deleter.UnfinishedDeletions(ctx, s.now().Add(-deletionGrace), 100)
	if err != nil {
		return 0, err
	}
	done := 0
	var errs []error
	for _, id := range ids {
		// One account that cannot be finished must not hold up the rest.
		if err := s.finish(ctx, id); err != nil {
			if ctx.Err() != nil {
				return done, err
			}
			errs = append(errs, fmt.Errorf("user %d: %w", id, err))
			continue
		}
		done++
	}
	return done, errors.Join(errs...)
}

// Run sweeps at once, then about every interval (with jitter, so that
// instances spread out), until ctx is done.
func (s *Deletions) Run(ctx context.Context, interval time.Duration) {
	for {
		if n, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "account deletion sweep", "err", err, "finished", n)
		} else if n > 0 {
			s.log.InfoContext(ctx, "account deletion sweep", "finished", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval/2 + rand.N(interval)):
		}
	}
}
