package push

import (
	"context"
	"encoding/base64"
	"errors"
	"net/netip"
	"net/url"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/rpcerr"
)

var _ parleyv1connect.PushServiceHandler = (*Service)(nil)

var errNoSubscription = connect.NewError(connect.CodeNotFound, errors.New("no such push subscription"))

// GetVapidPublicKey returns the VAPID public key browsers subscribe with.
func (s *Service) GetVapidPublicKey(
	context.Context, *connect.Request[parleyv1.GetVapidPublicKeyRequest],
) (*connect.Response[parleyv1.GetVapidPublicKeyResponse], error) {
	return connect.NewResponse(&parleyv1.GetVapidPublicKeyResponse{PublicKey: s.cfg.PublicKey}), nil
}

// RegisterPushSubscription registers the caller's device for its
// session.
func (s *Service) RegisterPushSubscription(
	ctx context.Context, req *connect.Request[parleyv1.RegisterPushSubscriptionRequest],
) (*connect.Response[parleyv1.RegisterPushSubscriptionResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	if err := s.checkEndpoint(m.GetEndpoint()); err != nil {
		return nil, err
	}
	p256dh, err := decodeKey(m.GetP256Dh())
	if err != nil || !validP256(p256dh) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("p256dh: not an uncompressed P-256 public key"))
	}
	secret, err := decodeKey(m.GetAuth())
	if err != nil || len(secret) != 16 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("auth: not a 16-byte secret"))
	}
	r := &subRecord{
		ID:       subscriptionID(m.GetEndpoint()),
		Session:  id.SessionID,
		Endpoint: m.GetEndpoint(),
		P256dh:   base64.RawURLEncoding.EncodeToString(p256dh),
		Auth:     base64.RawURLEncoding.EncodeToString(secret),
		Always:   m.GetAlways(),
		Created:  s.cfg.Now().UnixMilli(),
	}
	ok, err := s.store.register(ctx, id.UserID, r)
	if err == nil && !ok {
		// Full: subscriptions of sessions that expired make room.
		if _, err = s.liveSubscriptions(ctx, id.UserID); err == nil {
			ok, err = s.store.register(ctx, id.UserID, r)
		}
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "register push subscription", err)
	}
	if !ok {
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("too many push subscriptions; unregister one first"))
	}
	return connect.NewResponse(&parleyv1.RegisterPushSubscriptionResponse{Subscription: toProto(r, id.SessionID)}), nil
}

// checkEndpoint accepts an https URL (or http, with InsecureEndpoints),
// not on an address of the server's own networks when it names one (a
// name is checked as it resolves at each push: see PublicClient).
func (s *Service) checkEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || u.User != nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("endpoint: not a push service URL"))
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && s.cfg.InsecureEndpoints) {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("endpoint: must be an https URL"))
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && !s.cfg.InsecureEndpoints && !publicAddr(ip) {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("endpoint: not on a public address"))
	}
	return nil
}

// decodeKey decodes base64url, with or without padding.
func decodeKey(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// liveSubscriptions returns the user's subscriptions whose sessions are
// open, and removes the others (of sessions that expired: those that
// ended early went then).
func (s *Service) liveSubscriptions(ctx context.Context, uid int) ([]*subRecord, error) {
	subs, err := s.store.list(ctx, uid)
	if err != nil || len(subs) == 0 {
		return subs, err
	}
	ids := make([]auth.Identity, len(subs))
	for i, r := range subs {
		ids[i] = auth.Identity{UserID: uid, SessionID: r.Session}
	}
	open, err := s.sessions.SessionsOpen(ctx, ids)
	if err != nil {
		return nil, err
	}
	var live, gone []*subRecord
	for i, r := range subs {
		if open[i] {
			live = append(live, r)
		} else {
			gone = append(gone, r)
		}
	}
	if err := s.store.removeOf(ctx, uid, gone...); err != nil {
		return nil, err
	}
	return live, nil
}

// UnregisterPushSubscription removes one of the caller's subscriptions.
func (s *Service) UnregisterPushSubscription(
	ctx context.Context, req *connect.Request[parleyv1.UnregisterPushSubscriptionRequest],
) (*connect.Response[parleyv1.UnregisterPushSubscriptionResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	n, err := s.store.remove(ctx, id.UserID, req.Msg.GetId())
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "unregister push subscription", err)
	}
	if n == 0 {
		return nil, errNoSubscription
	}
	return connect.NewResponse(&parleyv1.UnregisterPushSubscriptionResponse{}), nil
}

// ListPushSubscriptions lists the caller's subscriptions.
func (s *Service) ListPushSubscriptions(
	ctx context.Context, _ *connect.Request[parleyv1.ListPushSubscriptionsRequest],
) (*connect.Response[parleyv1.ListPushSubscriptionsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	subs, err := s.liveSubscriptions(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "list push subscriptions", err)
	}
	out := &parleyv1.ListPushSubscriptionsResponse{}
	for _, r := range subs {
		out.Subscriptions = append(out.Subscriptions, toProto(r, id.SessionID))
	}
	return connect.NewResponse(out), nil
}

// GetPushSettings returns the caller's push settings.
func (s *Service) GetPushSettings(
	ctx context.Context, _ *connect.Request[parleyv1.GetPushSettingsRequest],
) (*connect.Response[parleyv1.GetPushSettingsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	set, err := s.store.settings(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "get push settings", err)
	}
	return connect.NewResponse(&parleyv1.GetPushSettingsResponse{Settings: &parleyv1.PushSettings{ShowPreviews: set.previews}}), nil
}

// UpdatePushSettings changes the caller's push settings.
func (s *Service) UpdatePushSettings(
	ctx context.Context, req *connect.Request[parleyv1.UpdatePushSettingsRequest],
) (*connect.Response[parleyv1.UpdatePushSettingsResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.Msg.ShowPreviews != nil {
		if err := s.store.setPreviews(ctx, id.UserID, req.Msg.GetShowPreviews()); err != nil {
			return nil, rpcerr.From(ctx, s.log, "update push settings", err)
		}
	}
	set, err := s.store.settings(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.log, "update push settings", err)
	}
	return connect.NewResponse(&parleyv1.UpdatePushSettingsResponse{Settings: &parleyv1.PushSettings{ShowPreviews: set.previews}}), nil
}

func toProto(r *subRecord, session string) *parleyv1.PushSubscription {
	return &parleyv1.PushSubscription{
		Id:             r.ID,
		Endpoint:       r.Endpoint,
		SessionId:      r.Session,
		CurrentSession: r.Session == session,
		Always:         r.Always,
		CreatedAt:      timestamppb.New(timeMS(r.Created)),
	}
}
