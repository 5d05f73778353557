package export

import (
	"archive/zip"
	"bytes"
	"context"
	"slices"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// movingChats pages the chats a, b, c, d by two, most active first; "d"
// gets a message once the first page was read, and moves to the top
// (past the pages read), and "b" is archived after the chats list was
// read, so the archived list has it too.
type movingChats struct {
	Chats
	calls int
}

func (m *movingChats) ListChats(_ context.Context, req *connect.Request[parleyv1.ListChatsRequest]) (*connect.Response[parleyv1.ListChatsResponse], error) {
	m.calls++
	order := []string{"a", "b", "c", "d"}
	if m.calls > 1 {
		order = []string{"d", "a", "b", "c"}
	}
	var archived []string
	if m.calls > 2 {
		order = slices.DeleteFunc(order, func(id string) bool { return id == "b" })
		archived = []string{"b"}
	}
	if req.Msg.GetArchived() {
		order = archived
	}
	start := 0
	if req.Msg.GetPageToken() != "" {
		start = 2
	}
	res := &parleyv1.ListChatsResponse{}
	for _, id := range order[min(start, len(order)):min(start+2, len(order))] {
		res.Chats = append(res.Chats, &parleyv1.Chat{Id: id})
	}
	if start == 0 && len(order) > 2 {
		res.NextPageToken = "next"
	}
	return connect.NewResponse(res), nil
}

// Chats that move while the lists are read are each exported once.
func TestArchive_ChatsThatMove(t *testing.T) {
	var buf bytes.Buffer
	a := &archive{z: zip.NewWriter(&buf)}
	ids, err := a.chats(context.Background(), &movingChats{})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	if want := []string{"a", "b", "c", "d"}; !slices.Equal(ids, want) {
		t.Fatalf("exported %v, want %v, each once", ids, want)
	}
}
