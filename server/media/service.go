package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Config tunes uploads and downloads.
type Config struct {
	// Keys are the server's signing keys; upload tokens and download URLs
	// are signed with keys derived from them.
	Keys *keyring.Ring
	// MaxImageBytes, MaxVideoBytes and MaxFileBytes limit the declared
	// size of an upload by the kind of file declared.
	MaxImageBytes, MaxVideoBytes, MaxFileBytes int64
	// Images bounds image dimensions.
	Images ImageLimits
	// UploadTTL is how long an upload URL is accepted.
	UploadTTL time.Duration
	// DownloadTTL is how long a signed download URL works (about; expiry
	// is rounded up to a tenth of it, so that URLs signed close together
	// are equal and caches can share them).
	DownloadTTL time.Duration
	// UploadsPerHour bounds the uploads one user may start.
	UploadsPerHour int
	// BodyIdleTimeout cuts an upload whose body makes no progress for
	// this long, so stalled clients do not hold connections for ever.
	BodyIdleTimeout time.Duration
	// MaxConcurrentUploads bounds the upload bodies one user may have in
	// flight at once, over all instances.
	MaxConcurrentUploads int
	// MaxUnsentBytes bounds the declared bytes of one user's uploads not
	// yet sent in a message or made an avatar.
	MaxUnsentBytes int64
	// MinUploadRate, in bytes a second, is the least an upload body must
	// bring averaged over UploadRateWindow (once it has run that long).
	MinUploadRate    int64
	UploadRateWindow time.Duration
	// RedisPrefix starts the Redis keys that make upload tokens single-use
	// and hold the rate-limit counters.
	RedisPrefix string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultMaxImageBytes   = 25 << 20
	DefaultMaxVideoBytes   = 1 << 30
	DefaultMaxFileBytes    = 512 << 20
	DefaultUploadTTL       = 15 * time.Minute
	DefaultDownloadTTL     = 30 * time.Minute
	DefaultUploadsPerHour  = 1000
	DefaultBodyIdleTimeout = time.Minute
)

func (c *Config) setDefaults() {
	if c.MaxImageBytes <= 0 {
		c.MaxImageBytes = DefaultMaxImageBytes
	}
	if c.MaxVideoBytes <= 0 {
		c.MaxVideoBytes = DefaultMaxVideoBytes
	}
	if c.MaxFileBytes <= 0 {
		c.MaxFileBytes = DefaultMaxFileBytes
	}
	if c.Images.MaxSide <= 0 {
		c.Images.MaxSide = DefaultImageLimits.MaxSide
	}
	if c.Images.MaxPixels <= 0 {
		c.Images.MaxPixels = DefaultImageLimits.MaxPixels
	}
	if c.UploadTTL <= 0 {
		c.UploadTTL = DefaultUploadTTL
	}
	if c.DownloadTTL <= 0 {
		c.DownloadTTL = DefaultDownloadTTL
	}
	if c.UploadsPerHour <= 0 {
		c.UploadsPerHour = DefaultUploadsPerHour
	}
	if c.BodyIdleTimeout <= 0 {
		c.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if c.MaxConcurrentUploads <= 0 {
		c.MaxConcurrentUploads = DefaultMaxConcurrentUploads
	}
	if c.MaxUnsentBytes <= 0 {
		c.MaxUnsentBytes = DefaultMaxUnsentBytes
	}
	if c.MinUploadRate <= 0 {
		c.MinUploadRate = DefaultMinUploadRate
	}
	if c.UploadRateWindow <= 0 {
		c.UploadRateWindow = DefaultUploadRateWindow
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// maxBytes is the size limit of a kind of file.
func (c *Config) maxBytes(class string) int64 {
	switch class {
	case TypeImage:
		return c.MaxImageBytes
	case TypeVideo:
		return c.MaxVideoBytes
	default:
		return c.MaxFileBytes
	}
}

// Members says who is in a chat; the chat service implements it.
type Members interface {
	IsMember(ctx context.Context, chatID bson.ObjectID, userID int) (bool, error)
}

// Service implements parleyv1connect.MediaServiceHandler and the upload
// and download endpoints (Handler).
type Service struct {
	log     *slog.Logger
	lib     *Library
	members Members
	rdb     redis.UniversalClient
	limiter *redis_rate.Limiter
	cfg     Config
	sign    signer
	// quotaLocks serialize a user's CreateUploads across instances, so
	// that concurrent ones cannot all fit in the same unsent bytes.
	quotaLocks *doclock.Locks
	// decoding bounds how many images are decoded at once, since each
	// may take tens of megabytes.
	decoding chan struct{}
}

var _ parleyv1connect.MediaServiceHandler = (*Service)(nil)

// New returns the media service over lib.
func New(log *slog.Logger, lib *Library, members Members, rdb redis.UniversalClient, cfg Config) (*Service, error) {
	cfg.setDefaults()
	sign, err := newSigner(cfg.Keys)
	if err != nil {
		return nil, err
	}
	return &Service{
		log: log, lib: lib, members: members, rdb: rdb, limiter: redis_rate.NewLimiter(rdb), cfg: cfg, sign: sign,
		decoding:   make(chan struct{}, runtime.GOMAXPROCS(0)),
		quotaLocks: doclock.New(rdb, cfg.RedisPrefix+"media:quota:"),
	}, nil
}

var errChatNotFound = connect.NewError(connect.CodeNotFound, errors.New("chat not found"))

// CreateUpload creates a pending media and its upload URL.
func (s *Service) CreateUpload(
	ctx context.Context, req *connect.Request[parleyv1.CreateUploadRequest],
) (*connect.Response[parleyv1.CreateUploadResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	class := declaredClass(req.Msg.GetContentType())
	key := req.Msg.GetClientUploadId()
	if key != "" {
		// A retry of an upload created takes nothing of the limits.
		m, err := s.createdUpload(ctx, id.UserID, key)
		if err != nil {
			return nil, rpcerr.From(ctx, s.log, "create upload", err)
		}
		if m != nil {
			return s.createdAgain(ctx, req.Msg, m)
		}
	}
	now := s.lib.store.nowMs()
	m := &mediaDoc{
		ID:             bson.NewObjectID(),
		UploaderID:     id.UserID,
		FileType:       class,
		State:          statePending,
		StateAt:        now,
		CreatedAt:      now,
		FileName:       req.Msg.GetFileName(),
		DeclaredType:   req.Msg.GetContentType(),
		Size:           req.Msg.GetSize(),
		ClientUploadID: key,
	}
	m.URL = URL(m.ID)
	switch t := req.Msg.GetTarget().(type) {
	case *parleyv1.CreateUploadRequest_ChatId:
		chatID, err := bson.ObjectIDFromHex(t.ChatId)
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("chat_id: not a chat id"))
		}
		ok, err := s.members.IsMember(ctx, chatID, id.UserID)
		if err != nil {
			return nil, rpcerr.From(ctx, s.log, "create upload", err)
		}
		if !ok {
			return nil, errChatNotFound
		}
		m.ChatID = &chatID
	case *parleyv1.CreateUploadRequest_Avatar:
		if class != TypeImage {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("content_type: an avatar must be an image"))
		}
		m.Avatar = true
	}
	if limit := s.cfg.maxBytes(class); m.Size > limit {
		return nil, connect.NewError(connect.CodeInvalidArgument,
			fmt.Errorf("size: %d bytes is over the limit of %d bytes for a %s", m.Size, limit, class))
	}
	// The hourly budget is taken after the checks of what the request
	// asks (its chat, its type, its size), which refuse it for nothing.
	allowed, err := s.limiter.Allow(ctx, fmt.Sprintf("%smedia:uploads:%d", s.cfg.RedisPrefix, id.UserID), redis_rate.PerHour(s.cfg.UploadsPerHour))
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "create upload", err)
	}
	if allowed.Allowed == 0 {
		return nil, rpcerr.TooMany("uploads", "too many uploads", allowed.RetryAfter)
	}
	m.Loose = true
	var created *mediaDoc
	earlier := func() (bool, error) {
		// Looked up again under the lock: concurrent retries.
		if key == "" {
			return false, nil
		}
		var err error
		created, err = s.createdUpload(ctx, id.UserID, key)
		return created != nil, err
	}
	if err := s.reserveUnsent(ctx, id.UserID, m.Size, earlier, func() error { return s.lib.store.insert(ctx, m) }); err != nil {
		return nil, rpcerr.From(ctx, s.log, "create upload", err)
	}
	if created != nil {
		return s.createdAgain(ctx, req.Msg, created)
	}
	expires := s.cfg.Now().Add(s.cfg.UploadTTL).Truncate(time.Second)
	return connect.NewResponse(s.uploadResponse(m, expires)), nil
}

// createdUpload returns the upload that userID created under the client's
// key whose upload URL has not expired yet, or nil. (An older one is
// forgotten: its file can no longer arrive, and clean-up deletes it; so
// is one being deleted, refused. The second off the window is the upload
// URL's expiry, which is whole seconds.)
func (s *Service) createdUpload(ctx context.Context, userID int, key string) (*mediaDoc, error) {
	return s.lib.store.byClientKey(ctx, userID, key, s.cfg.Now().Add(-s.cfg.UploadTTL+time.Second))
}

// createdAgain answers a retry of the CreateUpload that created m: with a
// new upload URL that expires when the first did, while m waits for its
// file. A request other than the first is ALREADY_EXISTS; the caller must
// still be a member of the upload's chat.
func (s *Service) createdAgain(ctx context.Context, req *parleyv1.CreateUploadRequest, m *mediaDoc) (*connect.Response[parleyv1.CreateUploadResponse], error) {
	same := m.FileName == req.GetFileName() && m.DeclaredType == req.GetContentType() && m.Size == req.GetSize()
	switch t := req.GetTarget().(type) {
	case *parleyv1.CreateUploadRequest_ChatId:
		same = same && m.ChatID != nil && m.ChatID.Hex() == t.ChatId
	case *parleyv1.CreateUploadRequest_Avatar:
		same = same && m.Avatar
	}
	if !same {
		return nil, connect.NewError(connect.CodeAlreadyExists,
			errors.New("client_upload_id: names another upload of yours; choose a new id for a new upload"))
	}
	if m.ChatID != nil {
		ok, err := s.members.IsMember(ctx, *m.ChatID, m.UploaderID)
		if err != nil {
			return nil, rpcerr.From(ctx, s.log, "create upload", err)
		}
		if !ok {
			return nil, errChatNotFound
		}
	}
	expires := m.CreatedAt.Add(s.cfg.UploadTTL).Truncate(time.Second)
	if m.State != statePending || !expires.After(s.cfg.Now()) {
		return connect.NewResponse(&parleyv1.CreateUploadResponse{Media: toMedia(m)}), nil
	}
	return connect.NewResponse(s.uploadResponse(m, expires)), nil
}

// uploadResponse answers CreateUpload with m and an upload URL that
// expires at expires.
func (s *Service) uploadResponse(m *mediaDoc, expires time.Time) *parleyv1.CreateUploadResponse {
	tok := s.sign.uploadToken(uploadGrant{MediaID: m.ID, Uploader: m.UploaderID, Size: m.Size, Expires: expires})
	return &parleyv1.CreateUploadResponse{
		Media:           toMedia(m),
		UploadUrl:       m.URL + "?token=" + tok,
		UploadExpiresAt: timestamppb.New(expires),
	}
}

// GetMedia returns a media's metadata and signed download URLs.
func (s *Service) GetMedia(
	ctx context.Context, req *connect.Request[parleyv1.GetMediaRequest],
) (*connect.Response[parleyv1.GetMediaResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	mediaID, err := bson.ObjectIDFromHex(req.Msg.GetMediaId())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("media_id: not a media id"))
	}
	m, err := s.visible(ctx, mediaID, id.UserID)
	if err != nil {
		return nil, err
	}
	res := &parleyv1.GetMediaResponse{Media: toMedia(m)}
	if m.Avatar && m.UploaderID != id.UserID {
		// Others see of an avatar what its picture shows: not the name
		// of the file it came from, nor a hash that would match it
		// against files seen elsewhere.
		res.Media = toPublicAvatar(m)
	}
	if m.State == stateReady {
		expires := s.downloadExpiry()
		res.DownloadUrl = s.sign.signPath(m.URL, expires)
		if m.Thumbnail {
			res.ThumbnailDownloadUrl = s.sign.signPath(thumbnailURL(m.ID), expires)
		}
		res.DownloadExpiresAt = timestamppb.New(expires)
	}
	return connect.NewResponse(res), nil
}

// downloadExpiry is the expiry of URLs signed now: DownloadTTL ahead,
// rounded up to a tenth of it.
func (s *Service) downloadExpiry() time.Time {
	step := max(s.cfg.DownloadTTL/10, time.Second)
	return s.cfg.Now().Add(s.cfg.DownloadTTL).Truncate(step).Add(step)
}

// visible loads a media userID may see, or NOT_FOUND: avatar images are
// visible to their uploader, and to everyone signed in once they are (or
// are being made) an avatar; chat files to their uploader until sent,
// then to the chat's members.
func (s *Service) visible(ctx context.Context, id bson.ObjectID, userID int) (*mediaDoc, error) {
	m, err := s.lib.store.get(ctx, id)
	if errors.Is(err, errNoMedia) {
		return nil, errMediaNotFound
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get media", err)
	}
	switch {
	case m.State == stateDeleting:
		return nil, errMediaNotFound
	case m.UploaderID == userID && !m.attached():
		return m, nil
	case m.Avatar:
		// Anyone signed in may see an avatar's picture, as a profile or
		// a group shows it, but not an upload that never became one (or
		// is not becoming one: a claim): the uploader may have thought
		// better of it.
		if m.State != stateReady || (!m.attached() && m.Claim == "") {
			return nil, errMediaNotFound
		}
		return m, nil
	case m.MessageID == nil || m.ChatID == nil:
		return nil, errMediaNotFound
	}
	ok, err := s.members.IsMember(ctx, *m.ChatID, userID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get media", err)
	}
	if !ok {
		return nil, errMediaNotFound
	}
	return m, nil
}

func toMedia(m *mediaDoc) *parleyv1.Media {
	out := &parleyv1.Media{
		Id:          m.ID.Hex(),
		UploaderId:  int32(m.UploaderID),
		FileType:    m.FileType,
		Url:         m.URL,
		State:       parleyv1.MediaState_MEDIA_STATE_PENDING,
		FileName:    m.FileName,
		ContentType: m.ContentType,
		Size:        m.Size,
		Sha256:      m.SHA256,
		Width:       int32(m.Width),
		Height:      int32(m.Height),
		Avatar:      m.Avatar,
		CreatedAt:   timestamppb.New(m.CreatedAt),
	}
	if m.State == stateReady {
		out.State = parleyv1.MediaState_MEDIA_STATE_READY
	}
	if m.ChatID != nil {
		out.ChatId = m.ChatID.Hex()
	}
	if m.MessageID != nil {
		out.MessageId = m.MessageID.Hex()
	}
	if m.UploadedAt != nil {
		out.UploadedAt = timestamppb.New(*m.UploadedAt)
	}
	if m.Thumbnail {
		out.ThumbnailUrl = thumbnailURL(m.ID)
	}
	return out
}

// toPublicAvatar is what users other than its uploader see of an avatar
// image.
func toPublicAvatar(m *mediaDoc) *parleyv1.Media {
	out := toMedia(m)
	out.FileName, out.Sha256 = "", ""
	out.CreatedAt, out.UploadedAt = nil, nil
	return out
}
