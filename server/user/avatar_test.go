package user_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/user"
)

// listAvatars calls ListAvatars and fails the test on an error.
func listAvatars(t *testing.T, c servertest.Clients, token string, userID int32) []*parleyv1.Avatar {
	t.Helper()
	res, err := c.Avatar.ListAvatars(context.Background(), servertest.WithToken(&parleyv1.ListAvatarsRequest{UserId: userID}, token))
	if err != nil {
		t.Fatalf("ListAvatars(%d): %v", userID, err)
	}
	return res.Msg.GetAvatars()
}

func avatarIDs(as []*parleyv1.Avatar) []int32 {
	var ids []int32
	for _, a := range as {
		ids = append(ids, a.GetId())
	}
	return ids
}

func TestAvatarService_ListAvatars(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			me := servertest.Register(t, c.Auth, servertest.UniqueName("Lister"))
			other := servertest.Register(t, c.Auth, servertest.UniqueName("Listed"))
			for _, tc := range []struct {
				name   string
				userID int32
				owner  servertest.Account
			}{
				{"own with user_id 0", 0, me},
				{"own by id", me.ID, me},
				{"another user's", other.ID, other},
			} {
				t.Run(tc.name, func(t *testing.T) {
					as := listAvatars(t, c, me.Token, tc.userID)
					if len(as) != 1 {
						t.Fatalf("ListAvatars = %v, want exactly one avatar", as)
					}
					a := as[0]
					// Others see what a profile shows: no upload time.
					own := tc.owner.ID == me.ID
					if a.GetUserId() != tc.owner.ID || !a.GetIsActive() || !a.GetIsRandom() || (a.GetUploadedAt() != nil) != own {
						t.Errorf("avatar = %v, want user %d's active random avatar", a, tc.owner.ID)
					}
					if want := getMe(t, c, tc.owner.Token).GetActiveAvatar(); a.GetId() != want.GetId() || a.GetUrl() != want.GetUrl() {
						t.Errorf("avatar = %v, want the active avatar %v", a, want)
					}
				})
			}
		})
	}
}

func TestAvatarService_ListAvatars_BadInput(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			me := servertest.Register(t, c.Auth, servertest.UniqueName("BadLister"))
			for _, tc := range []struct {
				name   string
				userID int32
				token  string
				want   connect.Code
			}{
				{"unknown user", 2147483647, me.Token, connect.CodeNotFound},
				{"negative user_id", -1, me.Token, connect.CodeInvalidArgument},
				{"no token", me.ID, "", connect.CodeUnauthenticated},
			} {
				t.Run(tc.name, func(t *testing.T) {
					before := snapshot(t, srv, me.ID)
					res, err := c.Avatar.ListAvatars(context.Background(), servertest.WithToken(&parleyv1.ListAvatarsRequest{UserId: tc.userID}, tc.token))
					if err == nil {
						t.Fatalf("ListAvatars = %v, want code %v", res.Msg, tc.want)
					}
					servertest.WantCode(t, err, tc.want)
					wantUnchanged(t, srv, me.ID, before)
				})
			}
		})
	}
}

func TestAvatarService_DeleteAvatar_Only(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Deleter"))
			old := getMe(t, c, acc.Token).GetActiveAvatar()

			res, err := c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: old.GetId()}, acc.Token))
			if err != nil {
				t.Fatalf("DeleteAvatar(only avatar): %v", err)
			}
			got := res.Msg.GetActiveAvatar()
			if got.GetId() == old.GetId() || got.GetUrl() == old.GetUrl() {
				t.Errorf("new avatar = %v, want another id and URL than the deleted %v", got, old)
			}
			if !got.GetIsActive() || !got.GetIsRandom() || got.GetUserId() != acc.ID || !strings.HasPrefix(got.GetUrl(), "/avatars/identicon/") {
				t.Errorf("new avatar = %v, want an active random identicon of user %d", got, acc.ID)
			}
			st := snapshot(t, srv, acc.ID)
			if len(st.Avatars) != 1 || int32(st.Avatars[0].ID) != got.GetId() || !st.Avatars[0].IsActive {
				t.Errorf("database avatars = %+v, want only the new active one %d", st.Avatars, got.GetId())
			}
			wantOneActive(t, srv, acc.ID, got.GetId())
			if as := listAvatars(t, c, acc.Token, 0); len(as) != 1 || as[0].GetId() != got.GetId() {
				t.Errorf("ListAvatars = %v, want only %d", avatarIDs(as), got.GetId())
			}
			if me := getMe(t, c, acc.Token); me.GetActiveAvatar().GetId() != got.GetId() || me.GetUser().GetAvatarUrl() != got.GetUrl() {
				t.Errorf("GetMe active avatar = %v, want %v", me.GetActiveAvatar(), got)
			}

			res, err = c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: got.GetId()}, acc.Token))
			if err != nil {
				t.Fatalf("DeleteAvatar(only avatar) again: %v", err)
			}
			third := res.Msg.GetActiveAvatar()
			if third.GetId() == got.GetId() || third.GetUrl() == got.GetUrl() || third.GetUrl() == old.GetUrl() {
				t.Errorf("third avatar = %v, want a fresh identicon after %v and %v", third, old, got)
			}
			wantOneActive(t, srv, acc.ID, third.GetId())
		})
	}
}

// TestAvatarService_SetActiveAndDelete works through a user with three
// avatars: the identicon and two inserted as uploads would be.
func TestAvatarService_SetActiveAndDelete(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Switcher"))
			viewer := servertest.Register(t, c.Auth, servertest.UniqueName("Viewer"))
			first := getMe(t, c, acc.Token).GetActiveAvatar()
			t0 := first.GetUploadedAt().AsTime()
			second := addAvatar(t, srv, acc.ID, t0.Add(time.Hour))
			third := addAvatar(t, srv, acc.ID, t0.Add(2*time.Hour))
			secondID, thirdID := int32(second.ID), int32(third.ID)

			if got, want := avatarIDs(listAvatars(t, c, acc.Token, acc.ID)), []int32{thirdID, secondID, first.GetId()}; !slices.Equal(got, want) {
				t.Fatalf("ListAvatars = %v, want newest first %v", got, want)
			}
			// Another user sees only the active one, as a profile shows.
			if got := listAvatars(t, c, viewer.Token, acc.ID); len(got) != 1 || !got[0].GetIsActive() {
				t.Fatalf("another user's ListAvatars = %v, want only the active avatar", avatarIDs(got))
			}

			t.Run("set active", func(t *testing.T) {
				res, err := c.Avatar.SetActiveAvatar(context.Background(), servertest.WithToken(&parleyv1.SetActiveAvatarRequest{AvatarId: secondID}, acc.Token))
				if err != nil {
					t.Fatalf("SetActiveAvatar: %v", err)
				}
				if got := res.Msg.GetAvatar(); got.GetId() != secondID || !got.GetIsActive() || got.GetIsRandom() || got.GetUrl() != second.AvatarURL {
					t.Errorf("SetActiveAvatar = %v, want avatar %d active", got, secondID)
				}
				wantOneActive(t, srv, acc.ID, secondID)
				if me := getMe(t, c, acc.Token); me.GetActiveAvatar().GetId() != secondID {
					t.Errorf("GetMe active avatar = %d, want %d", me.GetActiveAvatar().GetId(), secondID)
				}
				if u, err := c.User.GetUser(context.Background(), servertest.WithToken(&parleyv1.GetUserRequest{UserId: acc.ID}, viewer.Token)); err != nil || u.Msg.GetUser().GetAvatarUrl() != second.AvatarURL {
					t.Errorf("GetUser avatar_url = %v (%v), want %q", u, err, second.AvatarURL)
				}
				for _, a := range listAvatars(t, c, acc.Token, 0) {
					if a.GetIsActive() != (a.GetId() == secondID) {
						t.Errorf("ListAvatars: avatar %d is_active = %v, want only %d active", a.GetId(), a.GetIsActive(), secondID)
					}
				}
			})

			t.Run("set the active one again", func(t *testing.T) {
				before := snapshot(t, srv, acc.ID)
				res, err := c.Avatar.SetActiveAvatar(context.Background(), servertest.WithToken(&parleyv1.SetActiveAvatarRequest{AvatarId: secondID}, acc.Token))
				if err != nil {
					t.Fatalf("SetActiveAvatar: %v", err)
				}
				if got := res.Msg.GetAvatar(); got.GetId() != secondID || !got.GetIsActive() {
					t.Errorf("SetActiveAvatar = %v, want avatar %d active", got, secondID)
				}
				wantUnchanged(t, srv, acc.ID, before)
			})

			t.Run("delete the active one", func(t *testing.T) {
				res, err := c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: secondID}, acc.Token))
				if err != nil {
					t.Fatalf("DeleteAvatar: %v", err)
				}
				if got := res.Msg.GetActiveAvatar(); got.GetId() != thirdID || !got.GetIsActive() {
					t.Errorf("DeleteAvatar active avatar = %v, want the newest remaining %d", got, thirdID)
				}
				wantOneActive(t, srv, acc.ID, thirdID)
				if got, want := avatarIDs(listAvatars(t, c, acc.Token, 0)), []int32{thirdID, first.GetId()}; !slices.Equal(got, want) {
					t.Errorf("ListAvatars = %v, want %v", got, want)
				}
			})

			t.Run("delete an inactive one", func(t *testing.T) {
				res, err := c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: first.GetId()}, acc.Token))
				if err != nil {
					t.Fatalf("DeleteAvatar: %v", err)
				}
				if got := res.Msg.GetActiveAvatar(); got.GetId() != thirdID || !got.GetIsActive() {
					t.Errorf("DeleteAvatar active avatar = %v, want the still active %d", got, thirdID)
				}
				st := snapshot(t, srv, acc.ID)
				if len(st.Avatars) != 1 || st.Avatars[0].ID != third.ID || !st.Avatars[0].IsActive {
					t.Errorf("database avatars = %+v, want only %d, active", st.Avatars, thirdID)
				}
			})

			t.Run("delete the last one", func(t *testing.T) {
				res, err := c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: thirdID}, acc.Token))
				if err != nil {
					t.Fatalf("DeleteAvatar: %v", err)
				}
				got := res.Msg.GetActiveAvatar()
				if got.GetId() == thirdID || !got.GetIsActive() || !got.GetIsRandom() {
					t.Errorf("DeleteAvatar active avatar = %v, want a new random one", got)
				}
				wantOneActive(t, srv, acc.ID, got.GetId())
				if st := snapshot(t, srv, acc.ID); len(st.Avatars) != 1 {
					t.Errorf("database avatars = %+v, want only the new one", st.Avatars)
				}
			})
		})
	}
}

// TestAvatarService_BadInput tries to change avatars that are not the
// caller's, or that do not exist, and checks that nothing changes.
func TestAvatarService_BadInput(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		attacker := servertest.Register(t, c.Auth, servertest.UniqueName("Attacker"))
		victim := servertest.Register(t, c.Auth, servertest.UniqueName("Target"))
		victimActive := getMe(t, c, victim.Token).GetActiveAvatar().GetId()
		victimSpare := int32(addAvatar(t, srv, victim.ID, time.Now().Add(time.Hour)).ID)

		type call struct {
			name string
			do   func(token string, id int32) error
		}
		calls := []call{
			{"SetActiveAvatar", func(token string, id int32) error {
				_, err := c.Avatar.SetActiveAvatar(context.Background(), servertest.WithToken(&parleyv1.SetActiveAvatarRequest{AvatarId: id}, token))
				return err
			}},
			{"DeleteAvatar", func(token string, id int32) error {
				_, err := c.Avatar.DeleteAvatar(context.Background(), servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: id}, token))
				return err
			}},
		}
		cases := []struct {
			name  string
			id    int32
			token string
			want  connect.Code
		}{
			{"another user's active avatar", victimActive, attacker.Token, connect.CodeNotFound},
			{"another user's inactive avatar", victimSpare, attacker.Token, connect.CodeNotFound},
			{"unknown avatar", 2147483647, attacker.Token, connect.CodeNotFound},
			{"avatar_id 0", 0, attacker.Token, connect.CodeInvalidArgument},
			{"negative avatar_id", -1, attacker.Token, connect.CodeInvalidArgument},
			{"no token", victimSpare, "", connect.CodeUnauthenticated},
		}
		for _, cl := range calls {
			for _, tc := range cases {
				t.Run(p.Name+"/"+cl.name+"/"+tc.name, func(t *testing.T) {
					attackerBefore := snapshot(t, srv, attacker.ID)
					victimBefore := snapshot(t, srv, victim.ID)
					servertest.WantCode(t, cl.do(tc.token, tc.id), tc.want)
					wantUnchanged(t, srv, attacker.ID, attackerBefore)
					wantUnchanged(t, srv, victim.ID, victimBefore)
					wantOneActive(t, srv, victim.ID, victimActive)
				})
			}
		}
	}
}

// TestAvatarService_SetActiveAvatar_Concurrent switches one user's active
// avatar from many calls at once: none may fail, and one avatar stays
// active.
func TestAvatarService_SetActiveAvatar_Concurrent(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	acc := servertest.Register(t, base.Auth, servertest.UniqueName("Racer"))
	ids := []int32{
		getMe(t, base, acc.Token).GetActiveAvatar().GetId(),
		int32(addAvatar(t, srv, acc.ID, time.Now().Add(time.Hour)).ID),
	}
	const calls = 8
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make([]error, calls)
		start := make(chan struct{})
		for i := range calls {
			c := servertest.NewClients(srv, protocols[i%len(protocols)])
			wg.Go(func() {
				<-start
				_, errs[i] = c.Avatar.SetActiveAvatar(context.Background(),
					servertest.WithToken(&parleyv1.SetActiveAvatarRequest{AvatarId: ids[i%2]}, acc.Token))
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: call %d (avatar %d): %v", round, i, ids[i%2], err)
			}
		}
		active := wantOneActive(t, srv, acc.ID, 0)
		if a := int32(active.ID); a != ids[0] && a != ids[1] {
			t.Errorf("round %d: active avatar %d, want one of %v", round, a, ids)
		}
		if st := snapshot(t, srv, acc.ID); len(st.Avatars) != 2 {
			t.Errorf("round %d: avatars = %+v, want both still there", round, st.Avatars)
		}
	}
}

// TestAvatarService_DeleteAvatar_Concurrent deletes one user's active
// avatar from many calls at once: exactly one succeeds, the others find
// it gone, and one avatar stays active.
func TestAvatarService_DeleteAvatar_Concurrent(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	acc := servertest.Register(t, base.Auth, servertest.UniqueName("Deleters"))
	target := getMe(t, base, acc.Token).GetActiveAvatar().GetId()
	spare := int32(addAvatar(t, srv, acc.ID, time.Now().Add(time.Hour)).ID)

	const calls = 8
	var wg sync.WaitGroup
	errs := make([]error, calls)
	start := make(chan struct{})
	for i := range calls {
		c := servertest.NewClients(srv, protocols[i%len(protocols)])
		wg.Go(func() {
			<-start
			_, errs[i] = c.Avatar.DeleteAvatar(context.Background(),
				servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: target}, acc.Token))
		})
	}
	close(start)
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
		default:
			if err != nil {
				t.Errorf("call %d: %v, want success or not_found", i, err)
				continue
			}
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("%d calls deleted the avatar, want exactly 1", ok)
	}
	wantOneActive(t, srv, acc.ID, spare)
	if st := snapshot(t, srv, acc.ID); len(st.Avatars) != 1 {
		t.Errorf("avatars = %+v, want only the spare %d", st.Avatars, spare)
	}
}

// An account keeps at most user.MaxAvatars avatars: a new one past it is
// RESOURCE_EXHAUSTED and changes nothing; once one is deleted, the same
// image can be added.
func TestAvatarService_AddAvatar_Limit(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Collector"))
			have := len(listAvatars(t, c, acc.Token, 0))
			t0 := time.Now()
			var last int32
			for i := have; i < user.MaxAvatars; i++ {
				last = int32(addAvatar(t, srv, acc.ID, t0.Add(time.Duration(i)*time.Second)).ID)
			}
			active := getMe(t, c, acc.Token).GetActiveAvatar().GetId()
			img := servertest.UploadAvatar(t, srv, c.Media, acc.Token, "one.png", "image/png", servertest.PNG(t, 8, 8))
			add := func() (*parleyv1.Avatar, error) {
				res, err := c.Avatar.AddAvatar(ctx, servertest.WithToken(&parleyv1.AddAvatarRequest{MediaId: img.GetId()}, acc.Token))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetAvatar(), nil
			}
			_, err := add()
			servertest.WantCode(t, err, connect.CodeResourceExhausted)
			if n := len(listAvatars(t, c, acc.Token, 0)); n != user.MaxAvatars {
				t.Errorf("%d avatars after the refusal, want %d", n, user.MaxAvatars)
			}
			if got := getMe(t, c, acc.Token).GetActiveAvatar().GetId(); got != active {
				t.Errorf("the active avatar is %d after the refusal, want %d still", got, active)
			}

			if _, err := c.Avatar.DeleteAvatar(ctx, servertest.WithToken(&parleyv1.DeleteAvatarRequest{AvatarId: last}, acc.Token)); err != nil {
				t.Fatalf("DeleteAvatar: %v", err)
			}
			a, err := add()
			if err != nil {
				t.Fatalf("AddAvatar after a deletion: %v", err)
			}
			if !a.GetIsActive() || a.GetUrl() != img.GetUrl() {
				t.Errorf("AddAvatar = %v, want the image's avatar, active", a)
			}
			// A retry of it is no new avatar, limit or not.
			if again, err := add(); err != nil || again.GetId() != a.GetId() {
				t.Errorf("AddAvatar retried: %v, %v; want avatar %d", again, err, a.GetId())
			}
		})
	}
}
