// Package export serves parley.v1.ExportService and the download of
// finished exports under Path: a user's copy of their data, a zip of
// their profile, chats and messages (JSON, as the API renders them) and
// their own files, made in the background by a Worker on every instance.
//
// Jobs live in the exports collection, so that they survive restarts: a
// worker claims one with an atomic update and holds a lease on it, which
// another worker takes over when it expires. The zip goes to the media
// storage (disk or S3) under a key of its own, and is fetched through a
// URL signed with a key derived from the server's signing keys, valid
// until the export expires (Config.TTL after it was made), when the
// worker deletes it. The exportQuotas collection allows one export per
// user per Config.Every.
package export

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Config tunes exports.
type Config struct {
	// Keys are the server's signing keys; download URLs are signed with a
	// key derived from them, so every instance accepts them.
	Keys *keyring.Ring
	// TTL is how long a ready export is kept, and its download URL works.
	TTL time.Duration
	// Every is how often a user may start an export.
	Every time.Duration
	// PollInterval is how often (about) a worker looks for work.
	PollInterval time.Duration
	// Lease is how long a worker's claim on a job lasts without renewal;
	// a worker renews it every third of that while it works.
	Lease time.Duration
	// MaxAttempts bounds the attempts at one export; RetryDelay is the
	// wait after the first failed one, doubled after each next one.
	MaxAttempts int
	RetryDelay  time.Duration
	// TempDir holds zips being written; os.TempDir() when empty.
	TempDir string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultTTL          = 24 * time.Hour
	DefaultEvery        = 24 * time.Hour
	DefaultPollInterval = 5 * time.Second
	DefaultLease        = time.Minute
	DefaultMaxAttempts  = 3
	DefaultRetryDelay   = time.Minute
)

func (c *Config) setDefaults() {
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.Every <= 0 {
		c.Every = DefaultEvery
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.TempDir == "" {
		c.TempDir = os.TempDir()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// now is the clock at the precision MongoDB keeps.
func (c *Config) now() time.Time { return c.Now().UTC().Truncate(time.Millisecond) }

// Path is where finished exports are downloaded, by signed URL.
const Path = "/exports/"

// Service implements parleyv1connect.ExportServiceHandler and the
// download endpoint (Handler).
type Service struct {
	log     *slog.Logger
	store   *store
	storage media.Storage
	cfg     Config
	sign    *keyring.MACs
}

var _ parleyv1connect.ExportServiceHandler = (*Service)(nil)

// New returns the service over the exports collection of db and the zips
// in storage. locks serialize updates on FerretDB 1.x (see doclock); nil
// elsewhere.
func New(log *slog.Logger, db *mongo.Database, locks *doclock.Locks, storage media.Storage, cfg Config) (*Service, error) {
	cfg.setDefaults()
	if cfg.Keys == nil {
		return nil, errors.New("export: no signing keys")
	}
	sign, err := cfg.Keys.MACs("parley export download url")
	if err != nil {
		return nil, fmt.Errorf("export keys: %w", err)
	}
	return &Service{log: log, store: newStore(db, locks), storage: storage, cfg: cfg, sign: sign}, nil
}

// RequestExport starts an export of the caller's data, or returns the one
// in progress.
func (s *Service) RequestExport(ctx context.Context, _ *connect.Request[parleyv1.RequestExportRequest]) (*connect.Response[parleyv1.RequestExportResponse], error) {
	caller, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	now := s.cfg.now()
	j, created, err := s.store.request(ctx, caller.UserID, now, s.cfg.Every)
	var lim limited
	if errors.As(err, &lim) {
		return nil, rpcerr.TooMany("export",
			"one export a day: the next is allowed from "+lim.next.UTC().Format(time.RFC3339), lim.next.Sub(now))
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "request export", err)
	}
	if created {
		s.log.InfoContext(ctx, "export requested", "export", j.ID.Hex(), "user", caller.UserID)
	}
	return connect.NewResponse(&parleyv1.RequestExportResponse{Export: s.toProto(j, now), Created: created}), nil
}

var errExportNotFound = connect.NewError(connect.CodeNotFound, errors.New("export not found"))

// GetExport returns one of the caller's exports.
func (s *Service) GetExport(ctx context.Context, req *connect.Request[parleyv1.GetExportRequest]) (*connect.Response[parleyv1.GetExportResponse], error) {
	caller, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	id, err := bson.ObjectIDFromHex(req.Msg.GetExportId())
	if err != nil {
		return nil, errExportNotFound
	}
	j, err := s.store.get(ctx, id)
	if errors.Is(err, errNoJob) || (err == nil && j.UserID != caller.UserID) {
		// Another user's export is as good as missing.
		return nil, errExportNotFound
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get export", err)
	}
	return connect.NewResponse(&parleyv1.GetExportResponse{Export: s.toProto(j, s.cfg.now())}), nil
}

// ListExports returns the caller's newest exports.
func (s *Service) ListExports(ctx context.Context, req *connect.Request[parleyv1.ListExportsRequest]) (*connect.Response[parleyv1.ListExportsResponse], error) {
	caller, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	limit := int(req.Msg.GetPageSize())
	if limit == 0 {
		limit = 10
	}
	jobs, err := s.store.ofUser(ctx, caller.UserID, limit)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "list exports", err)
	}
	now := s.cfg.now()
	out := make([]*parleyv1.Export, 0, len(jobs))
	for i := range jobs {
		out = append(out, s.toProto(&jobs[i], now))
	}
	return connect.NewResponse(&parleyv1.ListExportsResponse{Exports: out}), nil
}

// toProto renders j at now, with a download URL while it is ready.
func (s *Service) toProto(j *job, now time.Time) *parleyv1.Export {
	e := &parleyv1.Export{
		Id:        j.ID.Hex(),
		CreatedAt: timestamppb.New(j.CreatedAt),
		Size:      j.Size,
		Attempts:  int32(j.Attempts),
	}
	if j.FinishedAt != nil {
		e.FinishedAt = timestamppb.New(*j.FinishedAt)
	}
	if j.ExpiresAt != nil {
		e.ExpiresAt = timestamppb.New(*j.ExpiresAt)
	}
	switch j.State {
	case statePending:
		e.State = parleyv1.ExportState_EXPORT_STATE_PENDING
	case stateRunning:
		e.State = parleyv1.ExportState_EXPORT_STATE_RUNNING
	case stateReady:
		if j.ExpiresAt == nil || !now.Before(*j.ExpiresAt) {
			// Due for deletion; the worker's next sweep deletes it.
			e.State = parleyv1.ExportState_EXPORT_STATE_EXPIRED
			break
		}
		e.State = parleyv1.ExportState_EXPORT_STATE_READY
		e.DownloadUrl = s.signPath(Path+j.ID.Hex(), *j.ExpiresAt)
	case stateFailed:
		e.State = parleyv1.ExportState_EXPORT_STATE_FAILED
	case stateExpired:
		e.State = parleyv1.ExportState_EXPORT_STATE_EXPIRED
	}
	return e
}

var b64 = base64.RawURLEncoding.Strict()

// signPath returns path signed until expires: the URL names the key that
// signed it, so that it keeps working across a key rotation.
func (s *Service) signPath(path string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	kid, sig := s.sign.Sign([]byte(path + "\n" + exp))
	return path + "?expires=" + exp + "&key=" + kid + "&signature=" + b64.EncodeToString(sig)
}

// DeleteUser deletes the exports of a user whose account is being
// deleted: their records, their zips and the user's quota. The records
// go first, so that no worker claims a job any more; a worker making one
// at that moment finds its lease gone when it finishes and deletes its
// own zip.
func (s *Service) DeleteUser(ctx context.Context, userID int) error {
	jobs, err := s.store.removeUser(ctx, userID)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		for n := 1; n <= j.Attempts; n++ {
			if err := s.storage.Delete(ctx, fileKey(j.ID, n)); err != nil {
				return fmt.Errorf("delete export %s: %w", j.ID.Hex(), err)
			}
		}
	}
	return nil
}
