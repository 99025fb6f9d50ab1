module github.com/sluice-mta/sluice/bouncer

go 1.26
