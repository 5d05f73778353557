// Package user implements parley.v1.UserService, parley.v1.AvatarService
// and parley.v1.PrivacyService over the PostgreSQL users, profile, avatars
// and blocks tables, serves the generated identicon avatars, gives the auth
// package the accounts it signs in (auth.Accounts), gives chats the
// blocks and privacy settings they enforce (chat.Privacy), and keeps the
// tombstones of deleted accounts (deletion.go).
package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/user"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/rpcerr"
	"github.com/parley-chat/parley/server/sqldb"
)

// Search page sizes.
const (
	DefaultPageSize = 20
	MaxPageSize     = 100
)

// MaxAvatars is how many avatars an account keeps at most: its images
// stay stored while they are avatars, outside the limit on unsent
// uploads, so without it one account could store without end.
const MaxAvatars = 100

// AvatarMedia is what avatars need of uploaded images; media.Library
// implements it.
type AvatarMedia interface {
	// ClaimAvatar reserves an avatar upload of the user for a new avatar
	// and returns the URL that serves it, and the claim it made.
	ClaimAvatar(ctx context.Context, userID int, mediaID bson.ObjectID) (string, media.Claim, error)
	// AttachAvatar records the avatar on its upload, if the upload
	// still holds the claim.
	AttachAvatar(ctx context.Context, mediaID bson.ObjectID, avatarID int, c media.Claim) error
	// DeleteAvatar deletes the upload a deleted avatar served, if any,
	// and if it still holds the claim that DetachAvatar returned.
	DeleteAvatar(ctx context.Context, url string, avatarID int, c media.Claim) error
	// DetachAvatar makes the upload an avatar serves a claim again,
	// before the avatar is deleted, so that clean-up deletes it if the
	// deletion stops half-way, and returns that claim.
	DetachAvatar(ctx context.Context, url string, avatarID int) (media.Claim, error)
}

// Service implements UserService, AvatarService, PrivacyService,
// auth.Accounts and chat.Privacy.
type Service struct {
	log   *slog.Logger
	store *store
	media AvatarMedia
	pairs PairGuard
}

// PairGuard brackets a change of blocks between two users, so that what
// depends on them (the checks of sends in their private chat, which
// instances cache) takes the change into account everywhere at once;
// chat.Service is one.
type PairGuard interface {
	ChangingPair(ctx context.Context, a, b int, write func(ctx context.Context) error) error
}

// noGuard is the PairGuard of a service told of none: the write alone.
type noGuard struct{}

func (noGuard) ChangingPair(ctx context.Context, _, _ int, write func(ctx context.Context) error) error {
	return write(ctx)
}

// GuardPairs has every change of blocks bracketed by g. Call it before
// the service serves.
func (s *Service) GuardPairs(g PairGuard) { s.pairs = g }

var (
	_ parleyv1connect.UserServiceHandler   = (*Service)(nil)
	_ parleyv1connect.AvatarServiceHandler = (*Service)(nil)
	_ auth.Accounts                        = (*Service)(nil)
)

// New returns the service over db, with uploaded avatar images in files
// (nil: AddAvatar is unavailable). now is the clock (time.Now when nil).
func New(log *slog.Logger, db *sqldb.DB, files AvatarMedia, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{log: log, store: &store{db: db, now: now}, media: files, pairs: noGuard{}}
}

// AvatarWithURL returns the avatar that serves url, for media clean-up.
func (s *Service) AvatarWithURL(ctx context.Context, url string) (int, bool, error) {
	return s.store.avatarWithURL(ctx, url)
}

var errNoUser = connect.NewError(connect.CodeNotFound, errors.New("no such user"))

// CreateAccount implements auth.Accounts.
func (s *Service) CreateAccount(ctx context.Context, a auth.NewAccount) (int, error) {
	return s.store.createAccount(ctx, a)
}

// LookupLogin implements auth.Accounts.
func (s *Service) LookupLogin(ctx context.Context, login string) (int, string, error) {
	return s.store.lookupLogin(ctx, login)
}

// PasswordHash implements auth.Accounts.
func (s *Service) PasswordHash(ctx context.Context, userID int) (string, error) {
	u, err := s.store.db.Ent.User.Query().Where(user.ID(userID)).Select(user.FieldPasswordHash).Only(ctx)
	if ent.IsNotFound(err) {
		return "", errNoUser
	}
	if err != nil {
		return "", fmt.Errorf("password hash: %w", err)
	}
	return u.PasswordHash, nil
}

// RecordLogin implements auth.Accounts.
func (s *Service) RecordLogin(ctx context.Context, userID int) error {
	err := s.store.recordLogin(ctx, userID)
	if ent.IsNotFound(err) {
		return errNoUser
	}
	return err
}

// Me implements auth.Accounts.
func (s *Service) Me(ctx context.Context, userID int) (*parleyv1.Me, error) {
	u, err := s.store.get(ctx, userID)
	if ent.IsNotFound(err) {
		return nil, errNoUser
	}
	if err != nil {
		return nil, err
	}
	return toMe(u), nil
}

// MissingUsers returns those of ids that name no user, or a user being
// deleted; chats use it.
func (s *Service) MissingUsers(ctx context.Context, ids []int) ([]int, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	found, err := s.store.db.Ent.User.Query().Where(user.IDIn(ids...), notDeleted()).IDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("find users: %w", err)
	}
	var missing []int
	for _, id := range ids {
		if !slices.Contains(found, id) {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// GetMe returns the caller's account.
func (s *Service) GetMe(
	ctx context.Context, _ *connect.Request[parleyv1.GetMeRequest],
) (*connect.Response[parleyv1.GetMeResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	me, err := s.Me(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get me", err)
	}
	return connect.NewResponse(&parleyv1.GetMeResponse{Me: me}), nil
}

// GetUser returns a user's public profile, or the marker of a deleted
// account.
func (s *Service) GetUser(
	ctx context.Context, req *connect.Request[parleyv1.GetUserRequest],
) (*connect.Response[parleyv1.GetUserResponse], error) {
	if _, err := auth.Caller(ctx); err != nil {
		return nil, err
	}
	userID := int(req.Msg.GetUserId())
	u, err := s.store.get(ctx, userID)
	if ent.IsNotFound(err) {
		deleted, err := s.store.deletedAmong(ctx, []int{userID})
		if err != nil {
			return nil, rpcerr.From(ctx, s.log, "get user", err)
		}
		if len(deleted) == 0 {
			return nil, errNoUser
		}
		return connect.NewResponse(&parleyv1.GetUserResponse{User: deletedUser(userID)}), nil
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get user", err)
	}
	return connect.NewResponse(&parleyv1.GetUserResponse{User: toUser(u)}), nil
}

// UpdateProfile changes the caller's username, phone number or description.
func (s *Service) UpdateProfile(
	ctx context.Context, req *connect.Request[parleyv1.UpdateProfileRequest],
) (*connect.Response[parleyv1.UpdateProfileResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	if err := s.store.updateProfile(ctx, id.UserID, profileUpdate{
		Username:    m.Username,
		PhoneNumber: m.PhoneNumber,
		Description: m.Description,
	}); err != nil {
		return nil, rpcerr.From(ctx, s.log, "update profile", err)
	}
	me, err := s.Me(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "update profile", err)
	}
	return connect.NewResponse(&parleyv1.UpdateProfileResponse{Me: me}), nil
}

// SearchUsers finds users by username prefix, a page at a time.
func (s *Service) SearchUsers(
	ctx context.Context, req *connect.Request[parleyv1.SearchUsersRequest],
) (*connect.Response[parleyv1.SearchUsersResponse], error) {
	if _, err := auth.Caller(ctx); err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = DefaultPageSize
	}
	var after *searchCursor
	if tok := req.Msg.GetPageToken(); tok != "" {
		c, err := decodeCursor(tok)
		if err != nil {
			return nil, err
		}
		after = &c
	}
	users, err := s.store.search(ctx, req.Msg.GetPrefix(), after, size+1)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "search users", err)
	}
	res := &parleyv1.SearchUsersResponse{}
	if len(users) > size {
		users = users[:size]
		last := users[size-1]
		res.NextPageToken = encodeCursor(searchCursor{Key: searchKeyOf(last), ID: last.ID})
	}
	for _, u := range users {
		res.Users = append(res.Users, toUser(u))
	}
	return connect.NewResponse(res), nil
}

// ListAvatars lists a user's avatars, newest first.
func (s *Service) ListAvatars(
	ctx context.Context, req *connect.Request[parleyv1.ListAvatarsRequest],
) (*connect.Response[parleyv1.ListAvatarsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	userID := int(req.Msg.GetUserId())
	if userID == 0 {
		userID = id.UserID
	}
	// Others see what a profile shows, the active avatar: not the
	// history of the old ones, nor when it was uploaded.
	own := userID == id.UserID
	avatars, err := s.store.listAvatars(ctx, userID, !own)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "list avatars", err)
	}
	if len(avatars) == 0 {
		// Every user has an avatar, so none means no such user.
		return nil, errNoUser
	}
	res := &parleyv1.ListAvatarsResponse{}
	for _, a := range avatars {
		pa := toAvatar(a)
		if !own {
			pa.UploadedAt = nil
		}
		res.Avatars = append(res.Avatars, pa)
	}
	return connect.NewResponse(res), nil
}

// SetActiveAvatar makes one of the caller's avatars the active one.
func (s *Service) SetActiveAvatar(
	ctx context.Context, req *connect.Request[parleyv1.SetActiveAvatarRequest],
) (*connect.Response[parleyv1.SetActiveAvatarResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	a, err := s.store.setActive(ctx, id.UserID, int(req.Msg.GetAvatarId()))
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "set active avatar", err)
	}
	return connect.NewResponse(&parleyv1.SetActiveAvatarResponse{Avatar: toAvatar(a)}), nil
}

// DeleteAvatar deletes one of the caller's avatars.
func (s *Service) DeleteAvatar(
	ctx context.Context, req *connect.Request[parleyv1.DeleteAvatarRequest],
) (*connect.Response[parleyv1.DeleteAvatarResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	uploaded := s.media != nil
	var claim media.Claim
	a, deleted, err := s.store.deleteAvatar(ctx, id.UserID, int(req.Msg.GetAvatarId()), func(a *ent.Avatar) error {
		if !uploaded || a.IsRandom {
			return nil
		}
		var err error
		claim, err = s.media.DetachAvatar(ctx, a.AvatarURL, a.ID)
		return err
	})
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "delete avatar", err)
	}
	if uploaded && !deleted.IsRandom {
		if err := s.media.DeleteAvatar(ctx, deleted.AvatarURL, deleted.ID, claim); err != nil {
			// The avatar is gone; clean-up deletes its upload, detached
			// (a claim), within the hour.
			s.log.ErrorContext(ctx, "delete avatar image", "url", deleted.AvatarURL, "err", err)
		}
	}
	return connect.NewResponse(&parleyv1.DeleteAvatarResponse{ActiveAvatar: toAvatar(a)}), nil
}

// AddAvatar makes an uploaded image the caller's active avatar.
func (s *Service) AddAvatar(
	ctx context.Context, req *connect.Request[parleyv1.AddAvatarRequest],
) (*connect.Response[parleyv1.AddAvatarResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if s.media == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("uploads are not configured"))
	}
	mediaID, err := bson.ObjectIDFromHex(req.Msg.GetMediaId())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("media_id: not a media id"))
	}
	var claim media.Claim
	a, err := s.store.addAvatar(ctx, id.UserID, func() (string, error) {
		url, c, err := s.media.ClaimAvatar(ctx, id.UserID, mediaID)
		claim = c
		return url, err
	})
	if errors.Is(err, errAvatarExists) {
		return nil, connect.NewError(connect.CodeAlreadyExists, errors.New("media is already an avatar"))
	}
	if errors.Is(err, errTooManyAvatars) {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("an account keeps at most %d avatars; delete one first", MaxAvatars))
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "add avatar", err)
	}
	if err := s.media.AttachAvatar(ctx, mediaID, a.ID, claim); err != nil {
		// The avatar works; clean-up finds it by its URL and records it.
		s.log.WarnContext(ctx, "record avatar on its image", "media", mediaID.Hex(), "err", err)
	}
	return connect.NewResponse(&parleyv1.AddAvatarResponse{Avatar: toAvatar(a)}), nil
}
