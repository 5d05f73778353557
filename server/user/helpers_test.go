package user_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/parley-chat/parley/ent"
	entavatar "github.com/parley-chat/parley/ent/avatar"
	entuser "github.com/parley-chat/parley/ent/user"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// protocols are the protocols every case runs over.
var protocols = []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]}

// getMe returns the caller's account through UserService.GetMe.
func getMe(t *testing.T, c servertest.Clients, token string) *parleyv1.Me {
	t.Helper()
	res, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, token))
	if err != nil {
		t.Fatalf("GetMe: %v", err)
	}
	return res.Msg.GetMe()
}

// avatarRow is one row of the avatars table, as a test compares it.
type avatarRow struct {
	ID         int
	URL        string
	IsActive   bool
	IsRandom   bool
	UploadedAt string
}

// userState is everything the database holds about one user that the
// user and avatar services may change.
type userState struct {
	Username    string
	Email       string
	Phone       string // "<nil>" when unset
	Description string // "<nil>" when unset
	Avatars     []avatarRow
}

func orNil(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *s)
}

// snapshot reads a user's row, profile and avatars from the database.
func snapshot(t *testing.T, srv *servertest.Server, userID int32) userState {
	t.Helper()
	u, err := srv.App.DB().Ent.User.Query().
		Where(entuser.ID(int(userID))).
		WithProfile().
		WithAvatars(func(q *ent.AvatarQuery) { q.Order(ent.Asc(entavatar.FieldID)) }).
		Only(context.Background())
	if err != nil {
		t.Fatalf("read user %d: %v", userID, err)
	}
	st := userState{Username: u.Username, Email: u.Email, Phone: orNil(u.PhoneNumber), Description: "<no profile>"}
	if p := u.Edges.Profile; p != nil {
		st.Description = orNil(p.Description)
	}
	for _, a := range u.Edges.Avatars {
		st.Avatars = append(st.Avatars, avatarRow{
			ID: a.ID, URL: a.AvatarURL, IsActive: a.IsActive, IsRandom: a.IsRandom,
			UploadedAt: a.UploadedAt.UTC().Format(time.RFC3339Nano),
		})
	}
	return st
}

// wantUnchanged fails the test unless the user's state equals before.
func wantUnchanged(t *testing.T, srv *servertest.Server, userID int32, before userState) {
	t.Helper()
	if after := snapshot(t, srv, userID); !reflect.DeepEqual(after, before) {
		t.Errorf("user %d changed by a refused call:\n got  %+v\n want %+v", userID, after, before)
	}
}

// activeAvatars returns the user's active avatars in the database.
func activeAvatars(t *testing.T, srv *servertest.Server, userID int32) []*ent.Avatar {
	t.Helper()
	as, err := srv.App.DB().Ent.Avatar.Query().
		Where(entavatar.UserID(int(userID)), entavatar.IsActive(true)).
		All(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return as
}

// wantOneActive fails the test unless the user has exactly one active
// avatar in the database, with the id wantID (any id when 0).
func wantOneActive(t *testing.T, srv *servertest.Server, userID int32, wantID int32) *ent.Avatar {
	t.Helper()
	as := activeAvatars(t, srv, userID)
	if len(as) != 1 {
		t.Fatalf("user %d has %d active avatars in the database, want exactly 1", userID, len(as))
	}
	if wantID != 0 && int32(as[0].ID) != wantID {
		t.Fatalf("active avatar of user %d = %d, want %d", userID, as[0].ID, wantID)
	}
	return as[0]
}

// addAvatar inserts a non-random, inactive avatar for the user straight
// into the database, as uploads will once they exist.
func addAvatar(t *testing.T, srv *servertest.Server, userID int32, uploadedAt time.Time) *ent.Avatar {
	t.Helper()
	a, err := srv.App.DB().Ent.Avatar.Create().
		SetUserID(int(userID)).
		SetAvatarURL(servertest.UniqueName(fmt.Sprintf("/avatars/uploads/%d-", userID)) + ".png").
		SetIsRandom(false).
		SetIsActive(false).
		SetUploadedAt(uploadedAt).
		Save(context.Background())
	if err != nil {
		t.Fatalf("insert avatar: %v", err)
	}
	return a
}
