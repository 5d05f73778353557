package user

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/block"
	"github.com/parley-chat/parley/ent/profile"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Page sizes of ListBlockedUsers.
const (
	DefaultBlocksPageSize = 50
	MaxBlocksPageSize     = 200
)

var _ parleyv1connect.PrivacyServiceHandler = (*Service)(nil)

// The settings as PostgreSQL stores them (ent enums) and as the API
// names them.
var (
	groupAddsToProto = map[profile.GroupAdds]parleyv1.GroupAdds{
		profile.GroupAddsEveryone: parleyv1.GroupAdds_GROUP_ADDS_EVERYONE,
		profile.GroupAddsChatted:  parleyv1.GroupAdds_GROUP_ADDS_CHATTED,
		profile.GroupAddsNobody:   parleyv1.GroupAdds_GROUP_ADDS_NOBODY,
	}
	privateChatsToProto = map[profile.PrivateChats]parleyv1.PrivateChats{
		profile.PrivateChatsEveryone: parleyv1.PrivateChats_PRIVATE_CHATS_EVERYONE,
		profile.PrivateChatsGroups:   parleyv1.PrivateChats_PRIVATE_CHATS_GROUPS,
		profile.PrivateChatsNobody:   parleyv1.PrivateChats_PRIVATE_CHATS_NOBODY,
	}
)

func defaultSettings() *parleyv1.PrivacySettings {
	return &parleyv1.PrivacySettings{
		GroupAdds:    parleyv1.GroupAdds_GROUP_ADDS_EVERYONE,
		PrivateChats: parleyv1.PrivateChats_PRIVATE_CHATS_EVERYONE,
	}
}

func toSettings(p *ent.Profile) *parleyv1.PrivacySettings {
	return &parleyv1.PrivacySettings{
		GroupAdds:    groupAddsToProto[p.GroupAdds],
		PrivateChats: privateChatsToProto[p.PrivateChats],
		HideLastSeen: p.HideLastSeen,
	}
}

// Settings returns the privacy settings of the users, in one read; chats
// and live presence use it.
func (s *Service) Settings(ctx context.Context, userIDs []int) (map[int]*parleyv1.PrivacySettings, error) {
	out := make(map[int]*parleyv1.PrivacySettings, len(userIDs))
	if len(userIDs) == 0 {
		return out, nil
	}
	ps, err := s.store.db.Ent.Profile.Query().Where(profile.IDIn(userIDs...)).
		Select(profile.FieldID, profile.FieldGroupAdds, profile.FieldPrivateChats, profile.FieldHideLastSeen).
		All(ctx)
	if err != nil {
		return nil, fmt.Errorf("privacy settings: %w", err)
	}
	for _, u := range userIDs {
		out[u] = defaultSettings()
	}
	for _, p := range ps {
		out[p.ID] = toSettings(p)
	}
	return out, nil
}

// BlockersOf returns those of among who blocked userID, in one read of
// the unique (blocker_id, blocked_id) index, and those being or having
// been deleted (one read by primary key): a deleted account refuses every
// message, new chat and presence, as one that blocked everyone.
func (s *Service) BlockersOf(ctx context.Context, userID int, among []int) ([]int, error) {
	if len(among) == 0 {
		return nil, nil
	}
	var ids []int
	err := s.store.db.Ent.Block.Query().
		Where(block.BlockedID(userID), block.BlockerIDIn(among...)).
		Select(block.FieldBlockerID).Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("blockers: %w", err)
	}
	deleted, err := s.store.deletedAmong(ctx, among)
	if err != nil {
		return nil, fmt.Errorf("blockers: %w", err)
	}
	for _, u := range deleted {
		if !slices.Contains(ids, u) {
			ids = append(ids, u)
		}
	}
	return ids, nil
}

// Blocks returns every user userID blocked.
func (s *Service) Blocks(ctx context.Context, userID int) ([]int, error) {
	var ids []int
	err := s.store.db.Ent.Block.Query().Where(block.BlockerID(userID)).
		Select(block.FieldBlockedID).Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("blocks: %w", err)
	}
	return ids, nil
}

// Block records that blocker blocked userID; blocking twice is one block.
func (s *Service) Block(ctx context.Context, blocker, userID int) error {
	err := s.pairs.ChangingPair(ctx, blocker, userID, func(ctx context.Context) error {
		err := s.store.db.Ent.Block.Create().SetBlockerID(blocker).SetBlockedID(userID).
			OnConflictColumns(block.FieldBlockerID, block.FieldBlockedID).DoNothing().Exec(ctx)
		if errors.Is(err, sql.ErrNoRows) {
			// Blocked already: DO NOTHING returned no row. A success, or
			// the change would stay registered (see chat.Service.ChangingPair).
			return nil
		}
		return err
	})
	if err != nil {
		if ent.IsConstraintError(err) {
			return errNoUser // the foreign key: no such user
		}
		return fmt.Errorf("block: %w", err)
	}
	return nil
}

// BlockUser blocks a user for the caller.
func (s *Service) BlockUser(
	ctx context.Context, req *connect.Request[parleyv1.BlockUserRequest],
) (*connect.Response[parleyv1.BlockUserResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	target := int(req.Msg.GetUserId())
	if target == id.UserID {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("user_id: you cannot block yourself"))
	}
	missing, err := s.MissingUsers(ctx, []int{target})
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "block user", err)
	}
	if len(missing) > 0 {
		return nil, errNoUser
	}
	if err := s.Block(ctx, id.UserID, target); err != nil {
		return nil, rpcerr.From(ctx, s.log, "block user", err)
	}
	return connect.NewResponse(&parleyv1.BlockUserResponse{}), nil
}

// UnblockUser lifts one of the caller's blocks.
func (s *Service) UnblockUser(
	ctx context.Context, req *connect.Request[parleyv1.UnblockUserRequest],
) (*connect.Response[parleyv1.UnblockUserResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	target := int(req.Msg.GetUserId())
	err = s.pairs.ChangingPair(ctx, id.UserID, target, func(ctx context.Context) error {
		_, err := s.store.db.Ent.Block.Delete().Where(block.BlockerID(id.UserID), block.BlockedID(target)).Exec(ctx)
		return err
	})
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "unblock user", err)
	}
	return connect.NewResponse(&parleyv1.UnblockUserResponse{}), nil
}

var errBlocksToken = connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token from this method"))

// ListBlockedUsers lists the caller's blocks, newest first, by block id.
func (s *Service) ListBlockedUsers(
	ctx context.Context, req *connect.Request[parleyv1.ListBlockedUsersRequest],
) (*connect.Response[parleyv1.ListBlockedUsersResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = DefaultBlocksPageSize
	}
	q := s.store.db.Ent.Block.Query().Where(block.BlockerID(id.UserID))
	if tok := req.Msg.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			return nil, errBlocksToken
		}
		before, err := strconv.Atoi(string(b))
		if err != nil || before <= 0 {
			return nil, errBlocksToken
		}
		q = q.Where(block.IDLT(before))
	}
	rows, err := q.Order(ent.Desc(block.FieldID)).Limit(size + 1).All(ctx)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "list blocked users", err)
	}
	res := &parleyv1.ListBlockedUsersResponse{}
	if len(rows) > size {
		rows = rows[:size]
		res.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(rows[size-1].ID)))
	}
	for _, r := range rows {
		res.Users = append(res.Users, &parleyv1.BlockedUser{UserId: int32(r.BlockedID), BlockedAt: timestamppb.New(r.CreatedAt)})
	}
	return connect.NewResponse(res), nil
}

// GetPrivacySettings returns the caller's privacy settings.
func (s *Service) GetPrivacySettings(
	ctx context.Context, _ *connect.Request[parleyv1.GetPrivacySettingsRequest],
) (*connect.Response[parleyv1.GetPrivacySettingsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	all, err := s.Settings(ctx, []int{id.UserID})
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get privacy settings", err)
	}
	return connect.NewResponse(&parleyv1.GetPrivacySettingsResponse{Settings: all[id.UserID]}), nil
}

// UpdatePrivacySettings changes the caller's settings that are set.
func (s *Service) UpdatePrivacySettings(
	ctx context.Context, req *connect.Request[parleyv1.UpdatePrivacySettingsRequest],
) (*connect.Response[parleyv1.UpdatePrivacySettingsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	up := s.store.db.Ent.Profile.UpdateOneID(id.UserID)
	if m.GroupAdds != nil {
		for k, v := range groupAddsToProto {
			if v == m.GetGroupAdds() {
				up.SetGroupAdds(k)
			}
		}
	}
	if m.PrivateChats != nil {
		for k, v := range privateChatsToProto {
			if v == m.GetPrivateChats() {
				up.SetPrivateChats(k)
			}
		}
	}
	if m.HideLastSeen != nil {
		up.SetHideLastSeen(m.GetHideLastSeen())
	}
	p, err := up.Save(ctx)
	if ent.IsNotFound(err) {
		return nil, errNoUser
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "update privacy settings", err)
	}
	return connect.NewResponse(&parleyv1.UpdatePrivacySettingsResponse{Settings: toSettings(p)}), nil
}
