# syntax=docker/dockerfile:1
# Static build, distroless final stage. The image must be pullable without
# the credentials nodecreds installs: publish it to a public registry or a
# mirror the nodes already trust.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/nodecreds ./cmd/nodecreds

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/nodecreds /nodecreds
ENTRYPOINT ["/nodecreds"]
CMD ["sync"]
