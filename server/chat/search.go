package chat

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
)

// Search works on words that Parley derives from a message's text and
// stores with it (messageDoc.Words): lower-cased, without accents, split
// at anything that is not a letter or a digit, each word once. A query's
// words are derived alike, and each must be the start of a stored word:
// an anchored regular expression on the multikey index of words, which
// MongoDB and DocumentDB answer from the index. Text indexes do not fit:
// DocumentDB's is accent-sensitive, and neither matches prefixes.

// Search limits.
const (
	DefaultSearchPageSize = 20
	MaxSearchPageSize     = 100
	maxQueryWords         = 8
	// maxWordLen bounds a stored word, so that a long run of letters
	// does not make a long index key; a query word is cut alike.
	maxWordLen = 64
)

// folding takes accents off: decomposed, without combining marks,
// composed again. A chain keeps state between calls, so each use makes
// its own.
func folding() transform.Transformer {
	return transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
}

// searchWords returns the distinct words of text, as search stores and
// matches them.
func searchWords(text string) []string {
	folded, _, err := transform.String(folding(), text)
	if err != nil {
		folded = text
	}
	var out []string
	for _, w := range strings.FieldsFunc(strings.ToLower(folded), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r)
	}) {
		if r := []rune(w); len(r) > maxWordLen {
			w = string(r[:maxWordLen])
		}
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// searchPage is the position after the last message of a search page.
type searchPage struct {
	SentAt time.Time
	ID     bson.ObjectID
}

func encodeSearchPage(p searchPage) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(p.SentAt.UnixMilli()))
	return base64.RawURLEncoding.EncodeToString(append(b, p.ID[:]...))
}

func decodeSearchPage(s string) (searchPage, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 20 {
		return searchPage{}, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token from this method"))
	}
	p := searchPage{SentAt: time.UnixMilli(int64(binary.BigEndian.Uint64(b[:8]))).UTC()}
	copy(p.ID[:], b[8:])
	return p, nil
}

// searchQuery is the filter of a search of the words in the chats, after
// the cursor, and its options: the newest first.
func searchQuery(words []string, chatIDs []bson.ObjectID, after *searchPage, limit int) (bson.D, *options.FindOptionsBuilder) {
	var each bson.A
	for _, w := range words {
		each = append(each, bson.D{{Key: "words", Value: bson.Regex{Pattern: "^" + regexp.QuoteMeta(w)}}})
	}
	filter := bson.D{
		{Key: "$and", Value: each},
		{Key: "chatId", Value: bson.D{{Key: "$in", Value: chatIDs}}},
		{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
	}
	if after != nil {
		filter = append(filter, bson.E{Key: "$or", Value: bson.A{
			bson.D{{Key: "sentAt", Value: bson.D{{Key: "$lt", Value: after.SentAt}}}},
			bson.D{{Key: "sentAt", Value: after.SentAt}, {Key: "_id", Value: bson.D{{Key: "$lt", Value: after.ID}}}},
		}})
	}
	return filter, options.Find().
		SetSort(bson.D{{Key: "sentAt", Value: -1}, {Key: "_id", Value: -1}}).
		SetLimit(int64(limit)).
		SetProjection(bson.D{{Key: "words", Value: 0}})
}

// search returns up to limit messages of the chats with the words, the
// newest first, after the cursor, leaving out those the user hid; more
// tells whether the search goes on past them.
func (s *store) search(ctx context.Context, userID int, words []string, chatIDs []bson.ObjectID, after *searchPage, limit int) (out []messageDoc, next *searchPage, err error) {
	more := false
	// Rounds of a page each, as long as hidden messages leave it short.
	for range 4 {
		filter, opts := searchQuery(words, chatIDs, after, limit+1)
		cur, err := s.messages.Find(ctx, filter, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("search messages: %w", err)
		}
		var ms []messageDoc
		if err := cur.All(ctx, &ms); err != nil {
			return nil, nil, fmt.Errorf("search messages: %w", err)
		}
		more = len(ms) > limit
		if more {
			ms = ms[:limit]
		}
		if len(ms) == 0 {
			break
		}
		after = &searchPage{SentAt: ms[len(ms)-1].SentAt, ID: ms[len(ms)-1].ID}
		if ms, err = s.withoutHiddenIDs(ctx, userID, ms); err != nil {
			return nil, nil, err
		}
		out = append(out, ms...)
		if len(out) >= limit || !more {
			break
		}
	}
	if len(out) > limit {
		out, more = out[:limit], true
		after = &searchPage{SentAt: out[limit-1].SentAt, ID: out[limit-1].ID}
	}
	if !more {
		return out, nil, nil
	}
	// Where the scan stopped: after the last message returned, or after
	// hidden ones when it returns none.
	return out, after, nil
}

// withoutHiddenIDs returns ms without the messages the user hid.
func (s *store) withoutHiddenIDs(ctx context.Context, userID int, ms []messageDoc) ([]messageDoc, error) {
	ids := make(bson.A, len(ms))
	for i, m := range ms {
		ids[i] = hiddenID(m.ID, userID)
	}
	cur, err := s.hidden.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, fmt.Errorf("hidden messages: %w", err)
	}
	var hidden []hiddenDoc
	if err := cur.All(ctx, &hidden); err != nil {
		return nil, fmt.Errorf("hidden messages: %w", err)
	}
	gone := make(map[bson.ObjectID]bool, len(hidden))
	for _, h := range hidden {
		gone[h.MessageID] = true
	}
	return slices.DeleteFunc(ms, func(m messageDoc) bool { return gone[m.ID] }), nil
}

// SearchMessages finds messages by the start of their words.
func (s *Service) SearchMessages(
	ctx context.Context, req *connect.Request[parleyv1.SearchMessagesRequest],
) (*connect.Response[parleyv1.SearchMessagesResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	words := searchWords(req.Msg.GetQuery())
	switch {
	case len(words) == 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("query: no word to search"))
	case len(words) > maxQueryWords:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("query: at most %d words", maxQueryWords))
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = DefaultSearchPageSize
	}
	var after *searchPage
	if tok := req.Msg.GetPageToken(); tok != "" {
		p, err := decodeSearchPage(tok)
		if err != nil {
			return nil, err
		}
		after = &p
	}
	chats := map[bson.ObjectID]*chatDoc{}
	if hex := req.Msg.GetChatId(); hex != "" {
		_, c, _, err := s.access(ctx, hex)
		if err != nil {
			return nil, err
		}
		chats[c.ID] = c
	} else {
		all, err := s.store.chatsOf(ctx, id.UserID)
		if err != nil {
			return nil, s.internal(ctx, "search messages", err)
		}
		for i := range all {
			if _, err := memberOf(&all[i], id.UserID); err == nil {
				chats[all[i].ID] = &all[i]
			}
		}
	}
	res := &parleyv1.SearchMessagesResponse{}
	if len(chats) == 0 {
		return connect.NewResponse(res), nil
	}
	ids := slices.Collect(maps.Keys(chats))
	ms, next, err := s.store.search(ctx, id.UserID, words, ids, after, size)
	if err != nil {
		return nil, s.internal(ctx, "search messages", err)
	}
	if next != nil {
		res.NextPageToken = encodeSearchPage(*next)
	}
	// Each found message as its chat renders it (status, quote, pin...):
	// chat by chat, in one render per chat, then back in search order.
	byChat := map[bson.ObjectID][]messageDoc{}
	for _, m := range ms {
		byChat[m.ChatID] = append(byChat[m.ChatID], m)
	}
	rendered := map[bson.ObjectID]*parleyv1.Message{}
	for chatID, docs := range byChat {
		c := chats[chatID]
		if req.Msg.GetChatId() == "" {
			// The whole chat, where chatsOf read a part.
			if c, err = s.store.getChat(ctx, chatID); err != nil {
				return nil, s.internal(ctx, "search messages", err)
			}
		}
		p, err := s.positions(ctx, c)
		if err != nil {
			return nil, s.internal(ctx, "search messages", err)
		}
		out, err := s.renderMessages(ctx, c, id.UserID, p, docs)
		if err != nil {
			return nil, s.internal(ctx, "search messages", err)
		}
		for i := range docs {
			rendered[docs[i].ID] = out[i]
		}
	}
	for _, m := range ms {
		if r := rendered[m.ID]; r != nil {
			res.Messages = append(res.Messages, r)
		}
	}
	return connect.NewResponse(res), nil
}
