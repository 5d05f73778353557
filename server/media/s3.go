package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config names an S3-compatible bucket.
type S3Config struct {
	// URL is the endpoint with the bucket as its path, and optionally the
	// credentials as its user info and the region as a query parameter:
	// https://KEY:SECRET@s3.example.com/bucket?region=eu-west-1. Without
	// user info the credentials come from the AWS_* environment, the
	// shared credentials file or the instance's IAM role.
	URL string
}

// S3 stores files in a bucket of an S3-compatible service through
// minio-go. Uploads go in 5 MiB parts, so one upload holds at most one
// part in memory.
type S3 struct {
	client *minio.Client
	bucket string
}

// s3PartSize is the smallest part S3 accepts; it bounds an upload's buffer.
const s3PartSize = 5 << 20

// NewS3 connects to the bucket named by rawURL and checks that it exists.
func NewS3(ctx context.Context, rawURL string) (*S3, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("media s3 url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errors.New("media s3 url: want http or https")
	}
	bucket := u.Path
	for len(bucket) > 0 && bucket[0] == '/' {
		bucket = bucket[1:]
	}
	if bucket == "" {
		return nil, errors.New("media s3 url: no bucket in the path")
	}
	var creds *credentials.Credentials
	if u.User != nil {
		secret, _ := u.User.Password()
		creds = credentials.NewStaticV4(u.User.Username(), secret, "")
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:  creds,
		Secure: u.Scheme == "https",
		Region: u.Query().Get("region"),
	})
	if err != nil {
		return nil, fmt.Errorf("media s3: %w", err)
	}
	ok, err := client.BucketExists(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("media s3: bucket %s: %w", bucket, err)
	}
	if !ok {
		return nil, fmt.Errorf("media s3: bucket %s does not exist", bucket)
	}
	return &S3{client: client, bucket: bucket}, nil
}

// Put uploads the object; S3 makes it visible only once complete, and an
// aborted multipart upload leaves no object.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	_, err := s.client.PutObject(ctx, s.bucket, key, r, size, minio.PutObjectOptions{
		ContentType: contentType,
		PartSize:    s3PartSize,
	})
	if err != nil {
		return fmt.Errorf("media s3: put %s: %w", key, err)
	}
	return nil
}

// Open returns the object; reads after a Seek fetch from that offset.
func (s *S3) Open(ctx context.Context, key string) (Object, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("media s3: get %s: %w", key, err)
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil, ErrNoObject
		}
		return nil, fmt.Errorf("media s3: stat %s: %w", key, err)
	}
	return s3Object{obj, info}, nil
}

// Delete removes the object; S3 reports no error for a missing one.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("media s3: delete %s: %w", key, err)
	}
	return nil
}

type s3Object struct {
	*minio.Object
	info minio.ObjectInfo
}

func (o s3Object) Size() int64        { return o.info.Size }
func (o s3Object) ModTime() time.Time { return o.info.LastModified }
