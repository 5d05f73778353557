package export

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/media"
)

// Worker makes the exports that users requested. Every instance runs
// one: it claims a job with one atomic update, holds a lease on it that
// it renews while it works, and writes the zip to a temporary file, then
// to the media storage. A worker that dies leaves a lease that expires,
// and another worker (on any instance, or the same one restarted) takes
// the job over; an attempt that fails is retried after a delay, up to
// Config.MaxAttempts attempts in all.
type Worker struct {
	log     *slog.Logger
	store   *store
	src     Sources
	storage media.Storage
	cfg     Config
	owner   string
}

// NewWorker returns a worker over the exports collection of db, reading
// the users' data from src and storing zips in storage.
func NewWorker(log *slog.Logger, db *mongo.Database, locks *doclock.Locks, storage media.Storage, src Sources, cfg Config) *Worker {
	cfg.setDefaults()
	var b [8]byte
	_, _ = crand.Read(b[:])
	host, _ := os.Hostname()
	return &Worker{
		log: log, store: newStore(db, locks), src: src, storage: storage, cfg: cfg,
		owner: host + "/" + hex.EncodeToString(b[:]),
	}
}

// Run works until ctx is done: whatever is due, then again every
// PollInterval (with jitter, so instances spread out). Ready exports
// whose time is up are deleted on the way. A job in progress when ctx
// ends is handed back for another worker.
func (w *Worker) Run(ctx context.Context) {
	for {
		for {
			worked, err := w.RunOnce(ctx)
			if err != nil && ctx.Err() == nil {
				w.log.ErrorContext(ctx, "export worker", "err", err)
			}
			if !worked || err != nil || ctx.Err() != nil {
				break
			}
		}
		if n, err := w.Sweep(ctx); err != nil && ctx.Err() == nil {
			w.log.ErrorContext(ctx, "export clean-up", "err", err, "deleted", n)
		} else if n > 0 {
			w.log.InfoContext(ctx, "export clean-up", "deleted", n)
		}
		wait := w.cfg.PollInterval/2 + mrand.N(w.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// RunOnce claims one job that is due, if any, and works on it; it
// reports whether there was one.
func (w *Worker) RunOnce(ctx context.Context) (bool, error) {
	now := w.cfg.now()
	j, err := w.store.claim(ctx, w.owner, now, w.cfg.Lease)
	if errors.Is(err, errNoJob) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	log := w.log.With("export", j.ID.Hex(), "user", j.UserID, "attempt", j.Attempts)
	if j.Attempts > w.cfg.MaxAttempts {
		// Its last attempt died with its worker.
		return true, w.giveUp(ctx, j, "every attempt stopped before it finished")
	}
	log.InfoContext(ctx, "export started")
	key, size, err := w.make(ctx, j)
	switch {
	case err == nil:
		now := w.cfg.now()
		err = w.store.finish(ctx, j.ID, w.owner, key, size, now, now.Add(w.cfg.TTL))
		if err == nil {
			log.InfoContext(ctx, "export ready", "bytes", size)
			w.removeAttempts(ctx, j, j.Attempts)
			return true, nil
		}
		if errors.Is(err, errLostLease) {
			// Another worker took it over: this attempt's zip is
			// nobody's.
			w.remove(ctx, key)
			log.WarnContext(ctx, "export taken over by another worker")
			return true, nil
		}
		// The update may have been applied all the same: the zip stays.
		// If the job is still running, its lease runs out and another
		// attempt makes it again; the one that finishes, or the sweep,
		// removes this attempt's zip.
		return true, err
	case errors.Is(err, errLostLease):
		log.WarnContext(ctx, "export taken over by another worker")
		return true, nil
	case ctx.Err() != nil:
		// The server is stopping: hand the job back at once.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := w.store.release(rctx, j.ID, w.owner, w.cfg.now()); rerr != nil && !errors.Is(rerr, errLostLease) {
			log.WarnContext(ctx, "hand export back", "err", rerr)
		}
		return true, ctx.Err()
	case j.Attempts >= w.cfg.MaxAttempts:
		log.ErrorContext(ctx, "export failed", "err", err)
		return true, w.giveUp(ctx, j, err.Error())
	default:
		log.WarnContext(ctx, "export attempt failed; will retry", "err", err)
		delay := w.cfg.RetryDelay << (j.Attempts - 1)
		if rerr := w.store.retry(ctx, j.ID, w.owner, w.cfg.now().Add(delay), err.Error()); rerr != nil && !errors.Is(rerr, errLostLease) {
			return true, rerr
		}
		return true, nil
	}
}

// giveUp records j as failed and removes what its attempts left.
func (w *Worker) giveUp(ctx context.Context, j *job, cause string) error {
	if err := w.store.fail(ctx, j, w.owner, w.cfg.now(), cause); err != nil && !errors.Is(err, errLostLease) {
		return err
	}
	w.removeAttempts(ctx, j, 0)
	return nil
}

// make writes j's zip to a temporary file, then stores it under this
// attempt's key, renewing the lease all the while. errLostLease: another
// worker took the job over.
func (w *Worker) make(ctx context.Context, j *job) (string, int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		w.keepLease(ctx, j, cancel)
	}()
	defer func() { cancel(nil); <-renewed }()

	tmp, err := os.CreateTemp(w.cfg.TempDir, tempPattern)
	if err != nil {
		return "", 0, fmt.Errorf("export temp file: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	fail := func(err error) (string, int64, error) {
		if cause := context.Cause(ctx); errors.Is(cause, errLostLease) {
			return "", 0, errLostLease
		}
		return "", 0, err
	}
	if err := writeArchive(ctx, tmp, w.src, j.UserID, w.cfg.now()); err != nil {
		return fail(err)
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return fail(fmt.Errorf("export temp file: %w", err))
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fail(fmt.Errorf("export temp file: %w", err))
	}
	key := fileKey(j.ID, j.Attempts)
	if err := w.storage.Put(ctx, key, tmp, size, "application/zip"); err != nil {
		return fail(fmt.Errorf("store export: %w", err))
	}
	if cause := context.Cause(ctx); errors.Is(cause, errLostLease) {
		w.remove(context.WithoutCancel(ctx), key)
		return "", 0, errLostLease
	}
	return key, size, nil
}

// keepLease renews the lease of j every third of its length until ctx is
// done, and cancels ctx with errLostLease when the job was taken over.
func (w *Worker) keepLease(ctx context.Context, j *job, cancel context.CancelCauseFunc) {
	t := time.NewTicker(w.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := w.store.renew(ctx, j.ID, w.owner, w.cfg.now().Add(w.cfg.Lease))
		switch {
		case errors.Is(err, errLostLease):
			cancel(errLostLease)
			return
		case err != nil && ctx.Err() == nil:
			// The next renewal may succeed; the lease has time left.
			w.log.WarnContext(ctx, "renew export lease", "export", j.ID.Hex(), "err", err)
		}
	}
}

// removeAttempts deletes the zips of j's attempts (1 to j.Attempts) but
// keep: those of attempts that died part-way, or all of a failed job's.
func (w *Worker) removeAttempts(ctx context.Context, j *job, keep int) {
	for n := 1; n <= j.Attempts; n++ {
		if n != keep {
			w.remove(ctx, fileKey(j.ID, n))
		}
	}
}

func (w *Worker) remove(ctx context.Context, key string) {
	if err := w.storage.Delete(ctx, key); err != nil {
		// The object stays unreferenced; nothing serves it.
		w.log.WarnContext(ctx, "delete export file", "key", key, "err", err)
	}
}

// abandonedAfter is how long a temporary zip goes unwritten before the
// sweep takes it for one an instance left when it died (a zip being
// written changes all the while; one being stored, for as long as the
// storage takes).
const abandonedAfter = 6 * time.Hour

// tempPattern names the temporary zips in Config.TempDir.
const tempPattern = "parley-export-*.zip"

// Sweep deletes the zips of ready exports whose time is up and marks
// them expired; it returns how many. Any instance may run it: deleting a
// missing object is no error. It also deletes the temporary zips that
// instances which died while writing them left in Config.TempDir.
func (w *Worker) Sweep(ctx context.Context) (int, error) {
	w.sweepTemp(ctx)
	done := 0
	for {
		batch, err := w.store.expiredReady(ctx, w.cfg.now(), 100)
		if err != nil {
			return done, err
		}
		for i := range batch {
			j := &batch[i]
			for n := 1; n <= j.Attempts; n++ {
				if err := w.storage.Delete(ctx, fileKey(j.ID, n)); err != nil {
					return done, fmt.Errorf("delete export %s: %w", j.ID.Hex(), err)
				}
			}
			if err := w.store.expire(ctx, j.ID); err != nil {
				return done, err
			}
			done++
		}
		if len(batch) < 100 {
			return done, nil
		}
	}
}

// sweepTemp deletes the temporary zips untouched for abandonedAfter: they
// hold copies of a user's files, and each may be large.
func (w *Worker) sweepTemp(ctx context.Context) {
	names, err := filepath.Glob(filepath.Join(w.cfg.TempDir, tempPattern))
	if err != nil {
		return // only a malformed pattern
	}
	for _, name := range names {
		fi, err := os.Stat(name)
		if err != nil || time.Since(fi.ModTime()) < abandonedAfter {
			continue
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			w.log.WarnContext(ctx, "export clean-up: an abandoned temporary zip", "file", name, "err", err)
			continue
		}
		w.log.InfoContext(ctx, "export clean-up: deleted an abandoned temporary zip", "file", name)
	}
}
