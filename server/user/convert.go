package user

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-chat/parley/ent"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// toUser converts a user loaded with its profile and active avatar into the
// public view.
func toUser(u *ent.User) *parleyv1.User {
	pu := &parleyv1.User{Id: int32(u.ID), Username: u.Username}
	if p := u.Edges.Profile; p != nil {
		if p.Description != nil {
			pu.Description = *p.Description
		}
		pu.CreatedAt = timestamppb.New(p.CreatedAt)
	}
	if a := activeOf(u); a != nil {
		pu.AvatarUrl = a.AvatarURL
	}
	return pu
}

// toMe converts a user loaded with its profile and active avatar into the
// owner's view.
func toMe(u *ent.User) *parleyv1.Me {
	me := &parleyv1.Me{User: toUser(u), Email: u.Email, EmailVerified: u.EmailVerifiedAt != nil}
	if u.PendingEmail != nil {
		me.PendingEmail = *u.PendingEmail
	}
	if u.PhoneNumber != nil {
		me.PhoneNumber = *u.PhoneNumber
	}
	if p := u.Edges.Profile; p != nil && p.LastLogin != nil {
		me.LastLoginAt = timestamppb.New(*p.LastLogin)
	}
	if a := activeOf(u); a != nil {
		me.ActiveAvatar = toAvatar(a)
	}
	return me
}

func activeOf(u *ent.User) *ent.Avatar {
	for _, a := range u.Edges.Avatars {
		if a.IsActive {
			return a
		}
	}
	return nil
}

func toAvatar(a *ent.Avatar) *parleyv1.Avatar {
	return &parleyv1.Avatar{
		Id:         int32(a.ID),
		UserId:     int32(a.UserID),
		Url:        a.AvatarURL,
		IsActive:   a.IsActive,
		IsRandom:   a.IsRandom,
		UploadedAt: timestamppb.New(a.UploadedAt),
	}
}
