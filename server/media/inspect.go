package media

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/gif" // decoders for image.DecodeConfig and image.Decode
	"image/jpeg"
	_ "image/png"
	"io"
	"mime"
	"strings"

	"github.com/gabriel-vasile/mimetype"
	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// safeImages are the image types served inline: raster formats browsers
// render without running anything. (SVG can carry scripts, so it is a
// plain file.)
var safeImages = map[string]bool{
	"image/png":  true,
	"image/jpeg": true,
	"image/gif":  true,
	"image/webp": true,
}

// IsSafeImage reports whether files of contentType may be shown inline.
func IsSafeImage(contentType string) bool { return safeImages[contentType] }

// classOf is the file type ("image", "video" or "file") of a content type.
func classOf(contentType string) string {
	switch {
	case safeImages[contentType]:
		return TypeImage
	case strings.HasPrefix(contentType, "video/"):
		return TypeVideo
	default:
		return TypeFile
	}
}

// mismatch explains why content of contentType is refused as what was
// declared (an image or a video, or any avatar).
func mismatch(contentType, declared string, avatar bool) error {
	const images = "only PNG, JPEG, GIF and WebP are"
	switch {
	case strings.HasPrefix(contentType, "image/") && !safeImages[contentType] && avatar:
		// The bytes are an image, but not one served as an image: SVG
		// can carry scripts, and browsers do not all render the others.
		return fmt.Errorf("%s is not accepted as an avatar: %s (SVG can carry scripts)", contentType, images)
	case strings.HasPrefix(contentType, "image/") && !safeImages[contentType]:
		return fmt.Errorf("%s is not accepted as an image: %s (SVG can carry scripts); send it as a file, declared as application/octet-stream", contentType, images)
	case avatar:
		return fmt.Errorf("an avatar must be an image (%s); the content is %s", images, contentType)
	default:
		return fmt.Errorf("the content is %s, not the declared %s", contentType, declared)
	}
}

// declaredClass is the file type a client's declared content type claims.
func declaredClass(contentType string) string {
	t, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return TypeFile
	}
	switch {
	case strings.HasPrefix(t, "image/"):
		return TypeImage
	case strings.HasPrefix(t, "video/"):
		return TypeVideo
	default:
		return TypeFile
	}
}

// sniff returns the content type the bytes at the start of a file show,
// without parameters.
func sniff(head []byte) string {
	t, _, err := mime.ParseMediaType(mimetype.Detect(head).String())
	if err != nil {
		return "application/octet-stream"
	}
	return t
}

// ImageLimits bound the images the server accepts, checked from the
// header before anything decodes pixels.
type ImageLimits struct {
	// MaxSide is the largest width or height.
	MaxSide int
	// MaxPixels is the largest width × height.
	MaxPixels int
}

// DefaultImageLimits allow the photos phones take (12 to 24 megapixels)
// and refuse decompression bombs: a 25-megapixel image decodes to at most
// 100 MB (8-bit RGBA; 200 MB for 16-bit PNG), and decodes run one per
// core.
var DefaultImageLimits = ImageLimits{MaxSide: 20000, MaxPixels: 25_000_000}

// errNoImageHeader refuses a file that claims to be an image but whose
// header does not say its size.
var errNoImageHeader = errors.New("the image's header cannot be read")

// checkImage reads an image's dimensions from its header in head and
// checks them against the limits.
func (l ImageLimits) checkImage(head []byte) (w, h int, err error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(head))
	if err != nil {
		return 0, 0, errNoImageHeader
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return 0, 0, errNoImageHeader
	}
	if cfg.Width > l.MaxSide || cfg.Height > l.MaxSide || cfg.Width*cfg.Height > l.MaxPixels {
		return 0, 0, fmt.Errorf("the image is %d×%d pixels; at most %d a side and %d in all are accepted",
			cfg.Width, cfg.Height, l.MaxSide, l.MaxPixels)
	}
	return cfg.Width, cfg.Height, nil
}

// ThumbnailSide is the longest side of a thumbnail.
const ThumbnailSide = 320

// thumbnail decodes an image whose header was checked and returns a JPEG
// that fits in ThumbnailSide × ThumbnailSide, transparent parts on white.
func thumbnail(r io.Reader) ([]byte, error) {
	src, _, err := image.Decode(bufio.NewReaderSize(r, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("decode image: %w", err)
	}
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	if w > ThumbnailSide || h > ThumbnailSide {
		if w >= h {
			w, h = ThumbnailSide, max(1, h*ThumbnailSide/b.Dx())
		} else {
			w, h = max(1, w*ThumbnailSide/b.Dy()), ThumbnailSide
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, b, draw.Over, nil)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 80}); err != nil {
		return nil, fmt.Errorf("encode thumbnail: %w", err)
	}
	return buf.Bytes(), nil
}
